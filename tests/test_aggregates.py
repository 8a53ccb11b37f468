"""Aggregate features (the baseline embeddings must beat) on a hand-made event table."""
import numpy as np
import pyarrow as pa
import pytest

from mlem_ray.data import prepare, write_prepared
from mlem_ray.data.ingest import IngestSpec
from mlem_ray.data.prepared import EventSequences
from mlem_ray.evaluation.aggregates import aggregate_features, score_features


@pytest.fixture
def hand(tmp_path):
    # Sequence "a": 3 events, "b": 2 events (one amount missing), "c": 2 events.
    events = pa.table({
        "id": ["a", "a", "a", "b", "b", "c", "c"],
        "t": [10.0, 12.0, 15.0, 1.0, 4.0, 0.0, 0.5],
        "shop": ["x", "y", "x", "y", "y", "x", "z"],
        "amount": [1.0, 2.0, 6.0, 3.0, None, -1.0, 1.0],
    })
    spec = IngestSpec(id_col="id", time_col="t", cat_cols=("shop",), num_cols=("amount",), test_fraction=0.0,
                      val_fraction=0.0, min_len=1)
    write_prepared(tmp_path / "d", *prepare(events, spec))
    return EventSequences.open(tmp_path / "d")


def test_aggregates_of_a_hand_made_table(hand):
    feats, names = aggregate_features(hand)
    ids = hand.ids.to_pylist()
    table = {i: dict(zip(names, row)) for i, row in zip(ids, feats)}
    a, b, c = table["a"], table["b"], table["c"]
    assert (a["length"], a["time_span"]) == (3, 5.0)
    assert (b["length"], b["time_span"]) == (2, 3.0)
    assert c["time_span"] == pytest.approx(0.5)
    # amount of "a": 1, 2, 6 (de-normalised back to the table's own values)
    assert a["amount_mean"] == pytest.approx(3.0)
    assert a["amount_std"] == pytest.approx(np.std([1.0, 2.0, 6.0]))
    assert (a["amount_min"], a["amount_max"]) == (pytest.approx(1.0), pytest.approx(6.0))
    assert a["amount_sum"] == pytest.approx(9.0)
    # "b" has one missing amount: stats over the one value that is there
    assert (b["amount_mean"], b["amount_std"], b["amount_sum"]) == (pytest.approx(3.0), pytest.approx(0.0),
                                                                     pytest.approx(3.0))
    assert (c["amount_min"], c["amount_max"]) == (pytest.approx(-1.0), pytest.approx(1.0))
    # shop frequencies: share of each sequence's events
    assert (a["shop=x"], a["shop=y"], a["shop=z"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 0.0)
    assert (b["shop=y"], c["shop=x"], c["shop=z"]) == (1.0, 0.5, 0.5)
    assert all(row["shop=<unseen>"] == 0.0 for row in table.values())
    # a subset of rows gives the same rows of the matrix
    sub, _ = aggregate_features(hand, np.array([2, 0]))
    np.testing.assert_array_equal(sub, feats[[2, 0]])


def test_aggregates_are_scored_by_the_same_probe(pendulum_data):
    seqs = EventSequences.open(pendulum_data(120, seed=1))
    rows = seqs.labelled()
    feats, names = aggregate_features(seqs, rows)
    assert names[:2] == ["length", "time_span"] and feats.shape == (len(rows), 2 + 2 * 5)
    scores = score_features(feats, seqs, rows, kinds=("tree", "linear"), folds=2, tree_iters=20)
    assert scores["primary_metric"] == "tree_test_mse" and np.isfinite(scores["linear_test_mse"])


def test_sweep_evaluator_scores_the_baseline_once_and_the_report_shows_it(tmp_path, pendulum_data):
    from mlem_ray.config import make_config
    from mlem_ray.evaluation import leaderboard
    from mlem_ray.evaluation.actor import Evaluator
    from mlem_ray.evaluation.trial import TrialRecord
    from mlem_ray.sweep.report import build_report
    from mlem_ray.training import LocalReporter, train

    data = pendulum_data(120, seed=2)
    cfg = make_config("coles", {"data.path": str(data), "model.hidden": 8, "data.batch_size": 16, "data.slice_min": 5,
                                "data.slice_max": 20, "train.epochs": 1, "train.budget_steps": 2})
    train(cfg, LocalReporter(tmp_path / "run", stream=None))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    ev = Evaluator(sweep, data, folds=2, tree_iters=10)
    for trial in ("a", "b"):
        row = ev.score(TrialRecord(trial, "compare_coles", "coles", str(tmp_path / "run" / "last")))
        assert np.isfinite(row["with_aggregates_tree_cv_mse_mean"])
    base = leaderboard.read_baseline(sweep)
    assert base["method"] == "aggregates" and base["features"] == 12 and np.isfinite(base["tree_test_mse"])
    assert len(leaderboard.read(sweep)) == 2  # the baseline is no trial on the leaderboard
    assert Evaluator(sweep, data).baseline == base  # a restarted actor does not score it again
    text = build_report(sweep)
    assert "Aggregate features (12 per sequence, the baseline): tree_cv_mse_mean" in text
    assert "- coles (compare_coles): " in text and "the aggregates" in text and "embedding + aggregates" in text
