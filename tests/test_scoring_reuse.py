"""What keeps a score's cost and memory bounded at scale: passes over a sample of a large file go
one stretch of it at a time (evaluation/mapped_pages.chunks), and the aggregate features of the
scoring rows are computed once per process (evaluation/aggregates.cached_features)."""
import numpy as np
import pytest

from mlem_ray.data.prepared import EventSequences
from mlem_ray.evaluation import aggregates, mapped_pages, subsets

from test_scoring_cost import make_binary


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return EventSequences.open(make_binary(tmp_path_factory.mktemp("reuse") / "d", n=1200))


def test_chunks_cover_rows_in_order_within_one_stretch_each():
    rng = np.random.default_rng(0)
    for _ in range(100):
        rows = np.sort(rng.choice(50_000, rng.integers(1, 4000), replace=False))
        max_rows, span = int(rng.integers(1, 700)), int(rng.integers(1, 9000))
        parts = mapped_pages.chunks(rows, max_rows, span)
        np.testing.assert_array_equal(np.concatenate([rows[p] for p in parts]), rows)
        assert all(0 < len(rows[p]) <= max_rows for p in parts)
        assert all(len(np.unique(rows[p] // span)) == 1 for p in parts)
    assert mapped_pages.chunks(np.array([], dtype=np.int64), 10) == []


def test_aggregates_do_not_depend_on_the_stretch(binary, monkeypatch):
    rows = subsets.scoring_rows(binary, 300, 100)
    whole, _ = aggregates.aggregate_features(binary, rows, chunk=10**6)
    monkeypatch.setattr(mapped_pages, "SPAN_SEQUENCES", 37)
    monkeypatch.setattr(mapped_pages.chunks, "__defaults__", (37,))
    cut, _ = aggregates.aggregate_features(binary, rows, chunk=50)
    np.testing.assert_array_equal(cut, whole)


def test_cached_features_are_computed_once_for_the_same_rows(binary, monkeypatch):
    calls = []
    real = aggregates.aggregate_features
    monkeypatch.setattr(aggregates, "aggregate_features", lambda s, r, **k: calls.append(len(r)) or real(s, r, **k))
    aggregates._CACHE.clear()
    rows = subsets.scoring_rows(binary, 300, 100)
    first, names = aggregates.cached_features(binary, rows)
    again, _ = aggregates.cached_features(binary, rows.copy())
    assert calls == [len(rows)] and again is first
    np.testing.assert_array_equal(first, real(binary, rows)[0])
    assert names == aggregates.feature_names(binary)
    assert not first.flags.writeable  # shared by every trial: nobody may change it
    other = subsets.scoring_rows(binary, 200, 100)
    assert aggregates.cached_features(binary, other)[0].shape[0] == len(other) and calls == [len(rows), len(other)]
