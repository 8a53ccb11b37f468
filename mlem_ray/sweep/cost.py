"""The cost objective of a multi-objective stage (``sweep.cost``), measured inside the trial.

- ``params``: the encoder's parameter count (what a deployed model holds in memory);
- ``embed_time``: seconds to embed 1,000 sequences with the trial's encoder on the trial's own
  device, timed on up to 1,000 training-pool sequences (the nightly-scoring cost of a bank's
  clients), after one warm-up batch.

Both depend on the architecture only, not on the weights, so a trial measures its cost once, at its
first checkpoint, and reports the same value with every later result (Optuna reads the last).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

COSTS = ("params", "embed_time")
# What a trial reports each cost under (minimised).
COST_METRICS = {"params": "cost_params", "embed_time": "cost_embed_s_per_1k"}
TIMED_SEQUENCES = 1000


def measure(cost: str, checkpoint: Path, data_path: str, device="cpu") -> float:
    """The trial's cost, read from its checkpoint (the encoder it would hand downstream)."""
    from ..training.checkpoint import load_encoder

    encoder, ckpt = load_encoder(checkpoint, device=device)
    if cost == "params":
        return float(sum(p.numel() for p in encoder.parameters()))
    from ..data.prepared import EventSequences
    from ..evaluation.embed import embed_rows

    seqs = EventSequences.open(data_path)
    rows = seqs.indices("train", "val")
    rows = np.sort(np.random.default_rng(0).choice(rows, size=min(TIMED_SEQUENCES, len(rows)), replace=False))
    max_len = int(ckpt.state["trainer"].get("max_len", seqs.schema.max_len))
    embed_rows(encoder, seqs, rows[:64], max_len, device=device)  # warm-up: allocator, kernels
    t0 = time.perf_counter()
    embed_rows(encoder, seqs, rows, max_len, device=device)
    return (time.perf_counter() - t0) * 1000.0 / max(1, len(rows))
