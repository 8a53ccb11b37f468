"""Per-step values that stay on the device between reads, so that a step never waits for the GPU.

Each training step adds its loss parts (row-weighted, in float64, in step order: the same sums
as reading every step) and records whether its loss was finite; nothing is read back to the host
until `check` (every train.sync_every steps and at the epoch's end). A non-finite loss is then
found at its exact step; the steps after it in the window ran on spoiled weights, but the
checkpoint of the last finished epoch is untouched, since an epoch that fails never writes one.
With several workers the finiteness flags are all-reduced at `check` only, not per step.
"""
from __future__ import annotations

import torch

from ..errors import NonFiniteLossError


class StepWindow:
    def __init__(self, size: int, device: torch.device, world_size: int = 1):
        self.size, self.device, self.world_size = size, device, world_size
        self.keys: list[str] | None = None
        self.sums: torch.Tensor | None = None  # (parts,) float64: sum over steps of value x rows
        self.rows = 0  # host-side: batch sizes are known without the device
        self.first_step = 0  # the epoch's step at the window's start
        self.steps = 0  # steps recorded in the current window
        self._finite: torch.Tensor | None = None  # (size,) bool
        self._parts: torch.Tensor | None = None  # (size, parts): each step's loss parts, for the message

    def add(self, out: dict, rows: int) -> None:
        """Record one step's outputs (device tensors); no host read."""
        if self.keys is None:
            self.keys = list(out)
            self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
            self._finite = torch.ones(self.size, dtype=torch.bool, device=self.device)
            self._parts = torch.zeros(self.size, len(self.keys), dtype=torch.float32, device=self.device)
        values = torch.stack([out[k].detach().float().reshape(()) for k in self.keys])
        self.sums += values.double() * rows
        self._finite[self.steps] = torch.isfinite(out["loss"].detach())
        self._parts[self.steps] = values
        self.rows += rows
        self.steps += 1

    @property
    def full(self) -> bool:
        return self.steps >= self.size

    def check(self, epoch: int, explain) -> None:
        """Read the window's finiteness flags (the one host sync); raise NonFiniteLossError naming
        the first bad step and the window it was found in. `explain(step) -> str` adds what could
        have caused it."""
        if not self.steps:
            return
        finite = self._finite[: self.steps]
        if self.world_size > 1:
            import torch.distributed as dist

            flags = finite.to(torch.float32)
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)  # a step is bad when it is bad on any rank
            finite = flags > 0
        flags = finite.cpu()
        last = self.first_step + self.steps - 1
        if not bool(flags.all()):
            bad = int((~flags).nonzero()[0])
            parts = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.keys, self._parts[bad].tolist()))
            step = self.first_step + bad
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, step {step} (found between steps {self.first_step} and {last}; "
                f"{parts}); stopped, the last good checkpoint is kept. {explain(step)}")
        self.first_step = last + 1
        self.steps = 0

    def totals(self) -> dict:
        """The epoch's sums (host floats) in _mean_metrics' form: {key: sum of value x rows, "__n": rows}."""
        if self.keys is None:
            return {}
        return {**dict(zip(self.keys, self.sums.tolist())), "__n": float(self.rows)}
