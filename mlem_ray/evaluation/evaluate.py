"""Score a checkpoint downstream (docs/method.md#downstream-probes): tree and linear probes with k-fold CV on the
labelled training ids plus the fixed test set, embedding quality, robustness to dropped events
(in time order) and, separately, to shuffled event order."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.prepared import EventSequences
from ..data.schema import DataError
from ..training.checkpoint import load_encoder
from .embed import embed_perturbed, embed_rows
from .probes import probe
from .quality import anisotropy, intrinsic_dimension

DROP_SHARES = (0.1, 0.3, 0.5, 0.7)


def evaluate_checkpoint(checkpoint, data, kinds=("tree", "linear"), folds: int = 5, seed: int = 0,
                        robustness: bool = False, tree_iters: int = 300, device="cpu", progress: bool = False,
                        with_aggregates: bool = False) -> dict:
    """-> flat dict of metrics (probe scores, anisotropy, intrinsic_dim, robust_drop{p}_...; with
    `with_aggregates`, the tree probe of the embedding concatenated with the aggregate features as
    with_aggregates_tree_*). `progress`: a tqdm bar over the steps (embedding, each probe, each
    perturbation) on a terminal."""
    from tqdm.auto import tqdm

    seqs = data if isinstance(data, EventSequences) else EventSequences.open(data)
    if seqs.targets is None or not seqs.schema.task:
        raise DataError(f"{seqs.path} has no targets: downstream evaluation needs a target table at ingest")
    encoder, ckpt = load_encoder(checkpoint, seqs.schema, device)
    max_len = ckpt.state["trainer"].get("max_len", seqs.schema.max_len)
    rows = seqs.labelled()
    steps = 2 + len(kinds) + (len(DROP_SHARES) + 1 if robustness else 0)
    bar = tqdm(total=steps, desc="evaluate", unit="step", leave=False, disable=None if progress else True)
    bar.set_postfix_str("embedding")
    emb = embed_rows(encoder, seqs, rows, max_len, device=device)
    bar.update()
    targets, split = seqs.targets[rows], seqs.split[rows]
    result: dict = {"checkpoint": str(checkpoint), "method": ckpt.config.objective.method,
                    "task": seqs.schema.task, "n_labelled": int(len(rows))}
    primary = None
    for kind in kinds:
        bar.set_postfix_str(f"{kind} probe")
        scores = probe(emb, targets, split, seqs.schema.task, kind=kind, folds=folds, seed=seed, tree_iters=tree_iters)
        primary = primary or (scores["primary_metric"], scores["primary_mode"])  # the first kind (tree) leads
        result.update(scores)
        bar.update()
    result["primary_metric"], result["primary_mode"] = primary
    if with_aggregates:
        from .aggregates import aggregate_features

        both = np.hstack([emb, aggregate_features(seqs, rows)[0]])
        scores = probe(both, targets, split, seqs.schema.task, kind="tree", folds=folds, seed=seed, tree_iters=tree_iters)
        result.update({f"with_aggregates_{k}": v for k, v in scores.items() if k.startswith("tree_")})
    everything = seqs.indices()
    all_emb = emb if len(rows) == len(everything) else embed_rows(encoder, seqs, everything, max_len, device=device)
    result["anisotropy"] = anisotropy(all_emb)
    result["intrinsic_dim"] = intrinsic_dimension(all_emb, seed=seed)
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
