"""Embeddings of a prepared data set from a checkpoint, and the robustness protocol
(docs/method.md#robustness: drop a share of events at random and shuffle their order, then re-score)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.batching import gather_events
from ..data.prepared import EventSequences
from ..training.embedding import embed_rows  # noqa: F401  (re-exported)
from ..training.embedding import to_device as _to


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
        batch = _to(gather_events(seqs, event_index, mask, r), device)
        if shuffle:
            batch.dt.clamp_(min=0)  # gaps of out-of-order events are negative; the model never saw those
        out[i : i + len(r)] = encoder(batch).float().cpu().numpy()
    return out


def embedding_table(seqs: EventSequences, rows: np.ndarray, emb: np.ndarray, wide: bool = False):
    """The `embed` output: id, split, target (when the data set has targets; null where
    unlabelled) and `embedding` as one fixed_size_list<float32>[H] column, the layout Hugging Face
    datasets, Lance and Ray Data read as a vector. `wide`: one float32 column per dimension
    (e0..eH-1) instead."""
    import pyarrow as pa

    columns = {"id": seqs.ids.take(pa.array(rows)), "split": pa.array(seqs.split[rows].astype(str))}
    if seqs.targets is not None:
        target = seqs.targets[rows]
        columns["target"] = pa.array(target, mask=np.isnan(target))
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if wide:
        columns.update({f"e{j}": emb[:, j] for j in range(emb.shape[1])})
    else:
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    return pa.table(columns)
