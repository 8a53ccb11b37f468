"""Embeddings of a prepared data set from a checkpoint, and the robustness protocol
(METHOD.md §5: drop a share of events at random and shuffle their order, then re-score)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.batching import gather_events, gather_windows
from ..data.prepared import EventSequences


@torch.no_grad()
def embed_rows(encoder, seqs: EventSequences, rows: np.ndarray, max_len: int, batch_size: int = 256,
               device="cpu") -> np.ndarray:
    """(len(rows), H) float32 embeddings of whole sequences (their last max_len events).
    Rows are processed in length order so batches carry little padding."""
    encoder.eval()
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), encoder.out_dim), dtype=np.float32)
    order = np.argsort(seqs.lengths[rows], kind="stable")
    for i in range(0, len(rows), batch_size):
        pick = order[i : i + batch_size]
        r = rows[pick]
        n = seqs.lengths[r]
        keep = np.minimum(n, max_len)
        batch = gather_windows(seqs, r, n - keep, keep).to(device)
        out[pick] = encoder(batch).float().cpu().numpy()
    return out


@torch.no_grad()
def embed_perturbed(encoder, seqs: EventSequences, rows: np.ndarray, max_len: int, drop: float, shuffle: bool,
                    seed: int = 0, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Embeddings after dropping a share `drop` of each sequence's events at random (at least one
    kept) and, with `shuffle`, presenting the kept events in random order."""
    encoder.eval()
    rng = np.random.default_rng(seed)
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), encoder.out_dim), dtype=np.float32)
    for i in range(0, len(rows), batch_size):
        r = rows[i : i + batch_size]
        n = np.minimum(seqs.lengths[r], max_len)
        first = seqs.offsets[r] + seqs.lengths[r] - n
        T = int(n.max())
        pos = np.arange(T)[None, :]
        valid = pos < n[:, None]
        keep = valid & (rng.random(valid.shape) >= drop)
        keep[np.arange(len(r)), rng.integers(0, n)] = True  # never an empty sequence
        key = rng.random(valid.shape) if shuffle else pos.astype(np.float64).repeat(len(r), 0)
        key = np.where(keep, key, np.inf)  # kept events first, in key order
        order = np.argsort(key, axis=1, kind="stable")
        kept = keep.sum(1)
        mask = pos < kept[:, None]
        event_index = first[:, None] + order
        batch = gather_events(seqs, event_index, mask, r).to(device)
        if shuffle:
            batch.dt.clamp_(min=0)  # gaps of out-of-order events are negative; the model never saw those
        out[i : i + len(r)] = encoder(batch).float().cpu().numpy()
    return out
