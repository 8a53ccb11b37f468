"""What the training loop needs to keep an accelerator busy, kept out of the loop itself:

- `Precision`: fp32, or bf16 / fp16 autocast (with a gradient scaler for fp16, whose narrow
  exponent underflows small gradients; bf16 has fp32's exponent and needs none). Weights and
  optimizer state stay fp32 either way, so checkpoints do not depend on the precision.
- `prefetch`: batches built in a background thread, `depth` ahead of the step. (The loop's
  DataLoader pins batches when the device is a GPU, so that `batch.to(device, non_blocking=True)`
  is a real asynchronous copy instead of a staged, blocking one; `train.loader_workers` builds
  them in worker processes instead, free of the GIL.)

- `reuse_freed_memory`: glibc's malloc hands blocks over 32 MiB back to the kernel on free, so a
  CPU step whose activations are a few such blocks pays for fresh zeroed pages (page faults) every
  step; told to keep them, the process reuses its own freed memory instead.

With precision fp32 and no prefetching the step is exactly the plain one (same operations in the
same order), so CPU results do not change.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import threading

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, glibc's malloc.h
_malloc_tuned = False


def reuse_freed_memory() -> bool:
    """Make glibc's malloc serve every block from the heap and never trim it, so freed memory is
    reused by the next step instead of being unmapped and faulted back in: 1.24x on the CPU
    CoLES step, 1.47x on inference (README, "Side by side with pytorch-lifestream"). The process
    keeps its peak memory until it exits, which suits a training, embedding or scoring process. Set
    MLEM_RAY_MALLOC=default to leave malloc alone. Returns whether the setting is in force."""
    global _malloc_tuned
    if _malloc_tuned or os.environ.get("MLEM_RAY_MALLOC", "") == "default":
        return _malloc_tuned
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        mallopt = None
    if mallopt is None:
        return False
    _malloc_tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _malloc_tuned


class Precision:
    """Autocast context and backward/step for one precision on one device."""

    def __init__(self, name: str, device: torch.device):
        if name not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
        device = torch.device(device)
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("train.precision=bf16 but this GPU has no bf16 support; use fp16 or fp32")
        self.name, self.device = name, device
        self.dtype = _DTYPES.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, params, clip_grad: float) -> None:
        """loss.backward(), optional clipping, optimizer.step(), through the scaler for fp16 (its
        step is skipped, and the scale lowered, when a gradient overflowed)."""
        if self.scaler is None:
            loss.backward()
            if clip_grad:
                nn.utils.clip_grad_norm_(params, clip_grad)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if clip_grad:
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(params, clip_grad)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


_DONE = object()


def prefetch(batches, depth: int):
    """Yield from `batches` (an iterable of PaddedBatch), produced `depth` ahead in a background
    thread (depth 0: in this thread, as plain iteration). The numpy gather in the collators
    releases the GIL for most of its work, so it overlaps the step. Closing the generator (a
    `break` in the consumer) stops and joins the thread before the next epoch changes the
    collator's state; an error in the thread is raised here."""
    if depth <= 0:
        for batch in batches:
            yield batch
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    thread = threading.Thread(target=work, name="mlem_ray-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
