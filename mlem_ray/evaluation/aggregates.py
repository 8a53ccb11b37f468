"""The baseline every embedding must beat: hand-made aggregate features per sequence (docs/method.md#the-aggregates-baseline),
as pytorch-lifestream's AggFeatureSeqEncoder builds them, scored by the same probes as embeddings.

Per sequence, over all its stored events:
- ``length`` (events) and ``time_span`` (last event time - first, in the schema's time unit);
- per numeric field, on the original scale (the stored values are de-normalised): mean, std
  (population), min, max and sum over its non-missing values (0 where a sequence has none);
- per categorical field, the share of the sequence's events that hold each code (the "unseen or
  rare" code included, padding excluded).

"Embedding + aggregates" is the two feature matrices side by side: an embedding earns its place in
industry by beating the aggregates, or by adding to them.
"""
from __future__ import annotations

import numpy as np

from ..data.prepared import EventSequences
from ..data.schema import UNSEEN_CODE
from .probes import probe

NUMERIC_STATS = ("mean", "std", "min", "max", "sum")


# Sequences whose features are computed at once: the per-event work arrays (about 60 bytes an
# event) and the per-code counts (8 bytes x codes a sequence) stay a few hundred MB at most,
# whatever the number of rows asked for.
CHUNK_SEQUENCES = 8_192


def feature_names(seqs: EventSequences) -> list[str]:
    """The F names of aggregate_features' columns, in order."""
    names = ["length", "time_span"]
    for field in seqs.schema.numeric:
        names += [f"{field.name}_{stat}" for stat in NUMERIC_STATS]
    for field in seqs.schema.categorical:
        names += [f"{field.name}=<unseen>"] + [f"{field.name}={v}" for v in field.vocabulary]
    return names


def aggregate_features(seqs: EventSequences, rows=None, chunk: int = CHUNK_SEQUENCES) -> tuple[np.ndarray, list[str]]:
    """-> ((len(rows), F) float64 features, their F names) for the sequences ``rows`` (all when
    None), computed `chunk` sequences at a time (the result is the same for any chunk size)."""
    rows = seqs.indices() if rows is None else np.asarray(rows, dtype=np.int64)
    names = feature_names(seqs)
    out = np.empty((len(rows), len(names)), dtype=np.float64)
    from . import mapped_pages

    for part in mapped_pages.chunks(rows, chunk):  # sorted rows: one stretch of the file at a time
        out[part] = _aggregate_chunk(seqs, rows[part])
        mapped_pages.release(seqs.path)  # each chunk's events are read once
    return out, names


# The features of the last row set asked for through `cached_features`: a sweep's evaluation actor
# scores the baseline and every trial's "embedding + aggregates" on the same rows (evaluation/
# subsets.py), so it computes them once per process instead of once per trial.
_CACHE: dict = {}


def cached_features(seqs: EventSequences, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """aggregate_features(seqs, rows), kept for the next call with the same data set and rows
    (one entry: the scoring rows are bounded by the caps, so the entry is too). The caller must
    not write into the array it gets."""
    rows = np.asarray(rows, dtype=np.int64)
    key = (str(seqs.path), seqs.schema.fingerprint(), int(seqs.num_events), len(rows), hash(rows.tobytes()))
    if _CACHE.get("key") != key:
        _CACHE.clear()
        features, names = aggregate_features(seqs, rows)
        features.setflags(write=False)
        _CACHE.update(key=key, value=(features, names))
    return _CACHE["value"]


def _aggregate_chunk(seqs: EventSequences, rows: np.ndarray) -> np.ndarray:
    lengths = seqs.lengths[rows]
    n = len(rows)
    # Flat positions of the chosen sequences' events and, per event, its output row (segment id).
    seg = np.repeat(np.arange(n), lengths)
    starts = np.repeat(seqs.offsets[rows] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    events = starts + np.arange(len(seg))
    nonempty = lengths > 0

    columns = [lengths.astype(np.float64)]
    values = seqs.take(events)
    times = values.time
    span = np.zeros(n)
    if nonempty.any():
        span[nonempty] = _segment_reduce(np.fmax, times, lengths) - _segment_reduce(np.fmin, times, lengths)
    columns.append(span)

    for field, stored in zip(seqs.schema.numeric, values.nums):
        x = stored.astype(np.float64) * field.scale + field.center
        valid = np.isfinite(x)
        count = np.bincount(seg, weights=valid, minlength=n)
        total = np.bincount(seg, weights=np.where(valid, x, 0.0), minlength=n)
        has = count > 0
        mean = np.divide(total, count, out=np.zeros(n), where=has)
        # Squared deviations from each sequence's own mean: no cancellation on large offsets.
        dev = np.where(valid, x - mean[seg], 0.0)
        std = np.sqrt(np.divide(np.bincount(seg, weights=dev * dev, minlength=n), count, out=np.zeros(n), where=has))
        lo, hi = np.zeros(n), np.zeros(n)
        if nonempty.any():
            lo[nonempty] = _segment_reduce(np.fmin, np.where(valid, x, np.inf), lengths)
            hi[nonempty] = _segment_reduce(np.fmax, np.where(valid, x, -np.inf), lengths)
        lo[~has], hi[~has] = 0.0, 0.0
        columns += [mean, std, lo, hi, total]

    for field, codes in zip(seqs.schema.categorical, values.cats):
        k = field.num_codes
        counts = np.bincount(seg * k + codes.astype(np.int64), minlength=n * k).reshape(n, k)
        share = counts[:, UNSEEN_CODE:] / np.maximum(lengths, 1)[:, None]
        columns += list(share.T)
    return np.column_stack(columns)


def _segment_reduce(ufunc, values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """ufunc over consecutive segments of the given (positive) lengths."""
    lengths = lengths[lengths > 0]
    return ufunc.reduceat(values, np.concatenate([[0], np.cumsum(lengths)[:-1]]))


def score_features(features: np.ndarray, seqs: EventSequences, rows, kinds=("tree",), folds: int = 5,
                   seed: int = 0, tree_iters: int = 300) -> dict:
    """The probes of evaluate_checkpoint on any per-sequence feature matrix (rows = labelled ids)."""
    result: dict = {}
    primary = None
    for kind in kinds:
        scores = probe(features, seqs.targets[rows], seqs.split[rows], seqs.schema.task, kind=kind,
                       folds=folds, seed=seed, tree_iters=tree_iters)
        primary = primary or (scores["primary_metric"], scores["primary_mode"])  # the first kind leads
        result.update(scores)
    result["primary_metric"], result["primary_mode"] = primary
    return result
