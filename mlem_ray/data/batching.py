"""Padded batches, the collate functions that build them and the CoLES slice sampler.

A batch is built in one vectorised gather: a (B, T) matrix of flat event indices, padding masked.

>>> import numpy as np
>>> lengths = np.array([3, 7])
>>> owner, starts, lens = SliceSampler(k=2, min_len=2, max_len=4).draw(lengths, np.random.default_rng(0))
>>> owner.tolist(), bool(np.all(starts + lens <= lengths[owner]))
([0, 0, 1, 1], True)
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from .prepared import EventSequences


@dataclass
class PaddedBatch:
    """B sequences (or slices), padded to the longest one, T.

    cat:       (B, T, n_cat) long, categorical codes, 0 on padding
    num:       (B, T, n_num) float, normalised numerics, 0 where missing or padding
    num_mask:  (B, T, n_num) bool, True where a numeric value is present
    dt:        (B, T) float, time since the previous event of the row, 0 for the first and padding
    mask:      (B, T) bool, True on real events
    lengths:   (B,) long
    seq_index: (B,) long, the source sequence of each row (slices of one sequence share it)
    target:    (B,) float, NaN where unlabelled; None when the data set has no targets
    host_lengths: (B,) long, `lengths` kept in host memory when the batch moves to a device (cuDNN's
               packed GRU takes its lengths on the host: reading them back would wait for the device)
    positive_pairs: (P, 2) long, the row pairs (i, j), i < j, that are slices of one sequence, in
               row-major order; set by SliceCollator, so that the margin loss indexes them without
               finding them on the device (a data-dependent shape, which waits for it)
    """

    cat: torch.Tensor
    num: torch.Tensor
    num_mask: torch.Tensor
    dt: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    seq_index: torch.Tensor
    target: torch.Tensor | None = None
    host_lengths: torch.Tensor | None = None
    positive_pairs: torch.Tensor | None = None

    def to(self, device, non_blocking: bool = False) -> PaddedBatch:
        moved = {
            f.name: (getattr(self, f.name).to(device, non_blocking=non_blocking) if getattr(self, f.name) is not None else None)
            for f in fields(self) if f.name != "host_lengths"
        }
        host = self.host_lengths if self.host_lengths is not None else self.lengths
        return PaddedBatch(**moved, host_lengths=host if host.device.type == "cpu" else None)

    def pin_memory(self) -> PaddedBatch:
        """Page-locked copies, so a later `.to(cuda, non_blocking=True)` copies asynchronously."""
        return PaddedBatch(**{f.name: (getattr(self, f.name).pin_memory() if getattr(self, f.name) is not None else None)
                              for f in fields(self)})

    def __len__(self) -> int:
        return self.lengths.shape[0]


def gather_events(seqs: EventSequences, event_index: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> PaddedBatch:
    """Build a batch from a (B, T) matrix of flat event indices (``mask`` False on padding).

    ``rows`` are the source sequences' row numbers (for seq_index and targets)."""
    idx = np.where(mask, event_index, 0)
    B, T = idx.shape
    values = seqs.take(idx)
    cat = np.zeros((B, T, len(values.cats)), np.int64)
    for j, codes in enumerate(values.cats):
        cat[:, :, j] = np.where(mask, codes, 0)
    num = np.zeros((B, T, len(values.nums)), np.float32)
    for j, v in enumerate(values.nums):
        num[:, :, j] = v
    num_mask = ~np.isnan(num) & mask[:, :, None]
    num = np.where(num_mask, num, 0.0).astype(np.float32)
    times = values.time
    dt = np.zeros((B, T), np.float32)
    if T > 1:
        dt[:, 1:] = np.where(mask[:, 1:], times[:, 1:] - times[:, :-1], 0.0)
    target = None
    if seqs.targets is not None:
        target = torch.from_numpy(seqs.targets[rows].astype(np.float32))
    return PaddedBatch(
        cat=torch.from_numpy(cat),
        num=torch.from_numpy(num),
        num_mask=torch.from_numpy(num_mask),
        dt=torch.from_numpy(dt),
        mask=torch.from_numpy(mask.copy()),
        lengths=torch.from_numpy(mask.sum(1).astype(np.int64)),
        seq_index=torch.from_numpy(np.asarray(rows, dtype=np.int64)),
        target=target,
    )


def gather_windows(seqs: EventSequences, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> PaddedBatch:
    """Contiguous windows: row r's events [starts, starts + lengths) (positions within the sequence)."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    T = int(lengths.max()) if len(lengths) else 0
    pos = np.arange(T)[None, :]
    mask = pos < lengths[:, None]
    event_index = seqs.offsets[rows][:, None] + np.asarray(starts, dtype=np.int64)[:, None] + pos
    return gather_events(seqs, event_index, mask, rows)


def counter_uniforms(*keys) -> np.ndarray:
    """Uniforms in [0, 1) that depend only on the keys (broadcast integer arrays), not on call
    order: splitmix64 of a mix of the keys. A slice drawn for (seed, epoch, sequence, view) is the
    same whichever batch or worker the sequence lands in."""
    with np.errstate(over="ignore"):
        h = np.zeros(np.broadcast(*keys).shape, dtype=np.uint64)
        for k in keys:
            h = _splitmix64(h ^ np.asarray(k).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class SliceSampler:
    """CoLES views (docs/method.md#coles): k contiguous random slices per sequence, each of length uniform
    in [min_len, max_len] capped at the sequence length, at a uniform start."""

    def __init__(self, k: int = 5, min_len: int = 25, max_len: int = 200):
        if k < 1 or min_len < 1 or max_len < min_len:
            raise ValueError(f"bad slice settings k={k}, min_len={min_len}, max_len={max_len}")
        self.k, self.min_len, self.max_len = k, min_len, max_len

    def sample(self, lengths: np.ndarray, u_len: np.ndarray, u_start: np.ndarray):
        """From 2 uniforms per slice (arrays of len(lengths) * k, sequence-major) ->
        (owner, starts, slice_lengths); owner indexes ``lengths``."""
        owner = np.repeat(np.arange(len(lengths)), self.k)
        n = np.asarray(lengths, dtype=np.int64)[owner]
        want = self.min_len + np.floor(u_len * (self.max_len - self.min_len + 1)).astype(np.int64)
        slice_len = np.minimum(want, n)
        starts = np.floor(u_start * (n - slice_len + 1)).astype(np.int64)
        return owner, starts, slice_len

    def draw(self, lengths: np.ndarray, rng: np.random.Generator):
        size = len(lengths) * self.k
        return self.sample(lengths, rng.random(size), rng.random(size))


class SequenceDataset(torch.utils.data.Dataset):
    """The sequences of some splits; an item is a row number, turned into tensors by a collator
    in one vectorised gather per batch (so a DataLoader with a DistributedSampler just works)."""

    def __init__(self, seqs: EventSequences, rows: np.ndarray):
        self.seqs = seqs
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return int(self.rows[i])


class FullCollator:
    """Whole sequences (their last ``max_len`` events when given)."""

    def __init__(self, seqs: EventSequences, max_len: int | None = None):
        self.seqs, self.max_len = seqs, max_len

    def __call__(self, rows) -> PaddedBatch:
        rows = np.asarray(rows, dtype=np.int64)
        n = self.seqs.lengths[rows]
        keep = np.minimum(n, self.max_len) if self.max_len else n
        return gather_windows(self.seqs, rows, n - keep, keep)


class SliceCollator:
    """k CoLES slices per sequence, keyed by (seed, epoch, sequence row, view): a resumed run draws
    the same slices as an uninterrupted one, and N workers x B sequences draw the same slices as
    one worker x N*B."""

    def __init__(self, seqs: EventSequences, sampler: SliceSampler, seed: int = 0):
        self.seqs, self.sampler, self.seed = seqs, sampler, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, rows) -> PaddedBatch:
        rows = np.asarray(rows, dtype=np.int64)
        view = np.tile(np.arange(self.sampler.k), len(rows))
        owner_rows = np.repeat(rows, self.sampler.k)
        u_len = counter_uniforms(self.seed, self.epoch, owner_rows, view, 0)
        u_start = counter_uniforms(self.seed, self.epoch, owner_rows, view, 1)
        owner, starts, lens = self.sampler.sample(self.seqs.lengths[rows], u_len, u_start)
        batch = gather_windows(self.seqs, rows[owner], starts, lens)
        batch.positive_pairs = torch.from_numpy(slice_pairs(len(rows), self.sampler.k))
        return batch


def slice_pairs(sequences: int, k: int) -> np.ndarray:
    """(sequences * k(k-1)/2, 2): the pairs (i, j), i < j, of rows that are slices of one sequence
    when each sequence's k slices are consecutive rows, in row-major order (the order in which
    the pairs of an upper-triangular mask come).

    >>> slice_pairs(2, 3).tolist()
    [[0, 1], [0, 2], [1, 2], [3, 4], [3, 5], [4, 5]]
    """
    i, j = np.triu_indices(k, 1)
    first = (np.arange(sequences, dtype=np.int64) * k)[:, None]
    return np.stack([(first + i).ravel(), (first + j).ravel()], axis=1)
