"""The rows a downstream scoring uses, so that its cost does not grow with the data set.

A scoring (``mlem-ray evaluate``, the sweep's evaluation actor, the aggregates baseline) embeds and
probes at most:

- ``probe_size`` labelled *training-pool* sequences (splits train and val; never test) for the
  probes' cross-validation and their final fit: stratified by class for classification, so the
  class shares are those of the pool (to within one row per class);
- ``test_size`` labelled test sequences to score the fitted probes on (stratified the same way);
- ``quality_size`` sequences of any split for the embedding-quality measures (anisotropy,
  intrinsic dimension), which subsample their input to at most 10,000 rows anyway.

Each subset depends only on the data set (its ``schema.seed`` and row order), the cap and which
subset it is: every trial of a sweep, a restarted actor and the baseline see the same rows, and so
does a later ``mlem-ray evaluate`` with the same caps. A cap of 0 means no cap (every row).
Rows come back sorted, so events are read in storage order.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the CLI reads the defaults below while parsing; pyarrow stays unimported then
    from ..data.prepared import EventSequences

# The reasons for these defaults are in the README ("Scoring cost").
DEFAULT_PROBE_SIZE = 20_000
DEFAULT_TEST_SIZE = 20_000
DEFAULT_QUALITY_SIZE = 10_000
# Which subset a draw is for: the three draws of one data set are independent of one another.
_PROBE, _TEST, _QUALITY = 1, 2, 3


def _rng(seqs: EventSequences, which: int, size: int) -> np.random.Generator:
    return np.random.default_rng([int(seqs.schema.seed), which, int(size)])


def stratified_sample(rows: np.ndarray, labels: np.ndarray | None, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` of `rows` without replacement, sorted; with `labels`, each class gets its share of
    `size` (largest remainders, so the counts add up to `size`) and at least one row where it has any."""
    rows = np.asarray(rows, dtype=np.int64)
    if size <= 0 or len(rows) <= size:
        return np.sort(rows)
    if labels is None:
        return np.sort(rng.choice(rows, size=size, replace=False))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * (size / len(rows))
    take = np.floor(exact).astype(np.int64)
    short = size - int(take.sum())
    take[np.argsort(-(exact - take), kind="stable")[:short]] += 1
    take = np.clip(np.maximum(take, 1), 0, counts)  # a rare class keeps a row, so the probe sees it
    picked = [rng.choice(rows[inverse == c], size=int(k), replace=False) for c, k in enumerate(take)]
    return np.sort(np.concatenate(picked))


def _labels(seqs: EventSequences, rows: np.ndarray) -> np.ndarray | None:
    return None if seqs.schema.task == "regression" else seqs.targets[rows]


def probe_rows(seqs: EventSequences, size: int = DEFAULT_PROBE_SIZE) -> np.ndarray:
    """Labelled training-pool rows the probes cross-validate and fit on."""
    pool = seqs.labelled("train", "val")
    return stratified_sample(pool, _labels(seqs, pool), size, _rng(seqs, _PROBE, size))


def test_rows(seqs: EventSequences, size: int = DEFAULT_TEST_SIZE) -> np.ndarray:
    """Labelled test rows the fitted probes are scored on."""
    test = seqs.labelled("test")
    return stratified_sample(test, _labels(seqs, test), size, _rng(seqs, _TEST, size))


def scoring_rows(seqs: EventSequences, probe_size: int = DEFAULT_PROBE_SIZE,
                 test_size: int = DEFAULT_TEST_SIZE) -> np.ndarray:
    """Probe rows and test rows together, sorted (the two sets are disjoint by split)."""
    return np.sort(np.concatenate([probe_rows(seqs, probe_size), test_rows(seqs, test_size)]))


def quality_rows(seqs: EventSequences, size: int = DEFAULT_QUALITY_SIZE) -> np.ndarray:
    """Rows of every split for anisotropy and intrinsic dimension."""
    return stratified_sample(seqs.indices(), None, size, _rng(seqs, _QUALITY, size))


def check_sizes(**sizes: int) -> None:
    """Caps are row counts: 0 (no cap) or more."""
    from ..errors import UsageError

    for name, value in sizes.items():
        if value < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 (no cap) or a number of sequences, got {value}")
