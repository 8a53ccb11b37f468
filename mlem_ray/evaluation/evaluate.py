"""Score a checkpoint downstream (docs/method.md#downstream-probes): tree and linear probes
with k-fold CV on the labelled training ids plus the fixed test set, embedding quality, robustness
to dropped events (in time order) and, separately, to shuffled event order.

The cost is bounded whatever the data set's size: the probes see a seeded, stratified subset of
the training pool and of the test split, the quality measures a seeded subset of all sequences
(evaluation/subsets.py); only those rows are embedded."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.prepared import EventSequences
from ..data.schema import DataError
from ..training.checkpoint import load_encoder
from .embed import embed_in_chunks, embed_perturbed
from .probes import probe
from .quality import anisotropy, intrinsic_dimension
from .subsets import (DEFAULT_PROBE_SIZE, DEFAULT_QUALITY_SIZE, DEFAULT_TEST_SIZE, quality_rows,
                      scoring_rows)

DROP_SHARES = (0.1, 0.3, 0.5, 0.7)


def evaluate_checkpoint(checkpoint, data, kinds=("tree", "linear"), folds: int = 5, seed: int = 0,
                        robustness: bool = False, tree_iters: int = 300, device="cpu", progress: bool = False,
                        with_aggregates: bool = False, probe_size: int = DEFAULT_PROBE_SIZE,
                        test_size: int = DEFAULT_TEST_SIZE, quality_size: int = DEFAULT_QUALITY_SIZE) -> dict:
    """-> flat dict of metrics (probe scores, anisotropy, intrinsic_dim, robust_drop{p}_...; with
    `with_aggregates`, the tree probe of the embedding concatenated with the aggregate features as
    with_aggregates_tree_*). `progress`: a tqdm bar over the steps (embedding, each probe, each
    perturbation) on a terminal. `probe_size`, `test_size`, `quality_size`: the caps of
    evaluation/subsets.py (0: every row); `n_train`, `n_test` and `n_quality` say how many rows
    were used."""
    from tqdm.auto import tqdm

    seqs = data if isinstance(data, EventSequences) else EventSequences.open(data)
    if seqs.targets is None or not seqs.schema.task:
        raise DataError(f"{seqs.path} has no targets: downstream evaluation needs a target table at ingest")
    encoder, ckpt = load_encoder(checkpoint, seqs.schema, device)
    max_len = ckpt.state["trainer"].get("max_len", seqs.schema.max_len)
    rows = scoring_rows(seqs, probe_size, test_size)
    steps = 2 + len(kinds) + (len(DROP_SHARES) + 1 if robustness else 0)
    bar = tqdm(total=steps, desc="evaluate", unit="step", leave=False, disable=None if progress else True)
    bar.set_postfix_str("embedding")
    emb = embed_in_chunks(encoder, seqs, rows, max_len, device=device)
    bar.update()
    targets, split = seqs.targets[rows], seqs.split[rows]
    result: dict = {"checkpoint": str(checkpoint), "method": ckpt.config.objective.method,
                    "task": seqs.schema.task, "n_labelled": int(len(seqs.labelled()))}
    primary = None
    for kind in kinds:
        bar.set_postfix_str(f"{kind} probe")
        scores = probe(emb, targets, split, seqs.schema.task, kind=kind, folds=folds, seed=seed, tree_iters=tree_iters)
        primary = primary or (scores["primary_metric"], scores["primary_mode"])  # the first kind (tree) leads
        result.update(scores)
        bar.update()
    result["primary_metric"], result["primary_mode"] = primary
    if with_aggregates:
        from .aggregates import cached_features

        both = np.hstack([emb, cached_features(seqs, rows)[0]])
        scores = probe(both, targets, split, seqs.schema.task, kind="tree", folds=folds, seed=seed, tree_iters=tree_iters)
        result.update({f"with_aggregates_{k}": v for k, v in scores.items() if k.startswith("tree_")})
    quality = quality_rows(seqs, quality_size)
    q_emb = _reuse_or_embed(emb, rows, quality, lambda r: embed_in_chunks(encoder, seqs, r, max_len, device=device))
    result["n_quality"] = int(len(quality))
    result["anisotropy"] = anisotropy(q_emb)
    result["intrinsic_dim"] = intrinsic_dimension(q_emb, seed=seed)
    bar.update()
    if robustness:
        # The probe is fitted on clean training embeddings and scores perturbed test sequences.
        test = split == "test"
        perturbations = [(f"drop{int(share * 100)}", share, False) for share in DROP_SHARES] + [("shuffle", 0.0, True)]
        for name, share, shuffle in perturbations:
            bar.set_postfix_str(f"robustness {name}")
            perturbed = emb.copy()
            perturbed[test] = embed_perturbed(encoder, seqs, rows[test], max_len, share, shuffle=shuffle, seed=seed,
                                              device=device)
            scores = probe(perturbed, targets, split, seqs.schema.task, kind="tree", folds=2, seed=seed,
                           tree_iters=tree_iters)
            for k, v in scores.items():
                if k.startswith("tree_test_"):
                    result[f"robust_{name}_{k[len('tree_test_'):]}"] = v
            bar.update()
    bar.close()
    return result


def _reuse_or_embed(emb: np.ndarray, rows: np.ndarray, wanted: np.ndarray, embed) -> np.ndarray:
    """Embeddings of `wanted` (sorted rows): those already in `emb` (of sorted `rows`) are reused,
    only the others are embedded."""
    pos = np.searchsorted(rows, wanted)
    have = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == wanted)
    out = np.empty((len(wanted), emb.shape[1]), dtype=emb.dtype)
    out[have] = emb[pos[have]]
    if (~have).any():
        out[~have] = embed(wanted[~have])
    return out
