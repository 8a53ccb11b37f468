"""The one distributed-gather helper used by every loss that needs the global batch.

With N workers, each holding B rows, `gather(x)` returns all N*B rows in rank order. Its backward
(torch.distributed.nn's all_gather) sums, for each rank's own slice, the gradients that every
rank's loss sends to it. Each rank computes the same global loss L, so each local slice gets
N * dL/dx_local; DDP then averages parameter gradients over the N ranks, which cancels the N:
the update equals single-process training on the global batch. (A gather that returns only the
local gradient would scale gradients by 1/N; one that detaches the other ranks' rows drops their
cross terms.)
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (N*B, ...), differentiable. Identity on one process.
    Every rank must pass the same B (the training loop drops ragged last batches when N > 1)."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather_labels(x: torch.Tensor) -> torch.Tensor:
    """Like gather, for tensors that need no gradient (labels, masks)."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def gather_pairs(pairs: torch.Tensor, rows: int) -> torch.Tensor:
    """A rank's (P, 2) row pairs -> every rank's, as row numbers of the gathered batch (rank r's
    rows come r * rows after rank 0's). Identity on one process. No pair spans two ranks: the
    sampler gives each rank other sequences."""
    if world_size() == 1:
        return pairs
    return gather_labels(pairs + dist.get_rank() * rows)


def global_mean(total: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """Mean over the global batch of a per-rank sum, in the form DDP expects.

    One process: total / count. N ranks: total * N / (count summed over ranks), so that the
    average over ranks (what DDP does to gradients, and what the loop reports) equals the mean
    over all ranks' elements, even when ranks hold different numbers of valid elements (padding,
    NaN). Without it, N x B would not match 1 x N*B."""
    if not isinstance(count, torch.Tensor):
        # a count the host knows: filled in on the device, not copied there (a tensor made
        # from a Python number is a blocking host-to-device copy, which waits for the GPU)
        count = torch.full((), float(count), dtype=total.dtype, device=total.device)
    count = count.to(total.dtype)
    n = world_size()
    if n > 1:
        count = count.detach().clone()
        dist.all_reduce(count)
        return total * n / count.clamp_min(1)
    return total / count.clamp_min(1)
