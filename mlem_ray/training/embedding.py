"""Embeddings of whole sequences from an encoder: the one embedding pass, used inside a trial by
the selection score (training/selection.py) and by evaluation, `embed` and the report above it."""
from __future__ import annotations

import numpy as np
import torch

from ..data.batching import gather_windows
from ..data.prepared import EventSequences
from .accel import Precision, reuse_freed_memory


def to_device(batch, device):
    """A batch on `device`; to a GPU from page-locked memory (one DMA copy, no staging buffer)."""
    device = torch.device(device)
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


@torch.no_grad()
def embed_rows(encoder, seqs: EventSequences, rows: np.ndarray, max_len: int, batch_size: int = 256,
               device="cpu", progress: bool = False, precision: str = "fp32") -> np.ndarray:
    """(len(rows), H) float32 embeddings of whole sequences (their last max_len events).
    Rows are processed in length order so batches carry little padding. `progress`: a tqdm bar
    (sequences) when stderr is a terminal. `precision` bf16/fp16 runs the encoder under autocast
    (training/accel.py)."""
    reuse_freed_memory()
    encoder.eval()
    autocast = Precision(precision, torch.device(device)).autocast
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), encoder.out_dim), dtype=np.float32)
    order = np.argsort(seqs.lengths[rows], kind="stable")
    from tqdm.auto import tqdm

    with tqdm(total=len(rows), desc="embedding", unit="seq", leave=False, disable=None if progress else True) as bar:
        for i in range(0, len(rows), batch_size):
            pick = order[i : i + batch_size]
            r = rows[pick]
            n = seqs.lengths[r]
            keep = np.minimum(n, max_len)
            batch = to_device(gather_windows(seqs, r, n - keep, keep), device)
            with autocast():
                out[pick] = encoder(batch).float().cpu().numpy()
            bar.update(len(pick))
    return out
