"""The in-trial selection score (RankMe, the linear probe on a fixed training-pool subset), the
leaderboard's one notion of "best", and the refusal of val_loss for a space that rescales the loss."""
import subprocess
import sys

import numpy as np
import pytest

from mlem_ray.data.prepared import EventSequences
from mlem_ray.evaluation import leaderboard
from mlem_ray.evaluation.selection import SelectionScorer, linear_probe_cv, rankme, subset_rows
from mlem_ray.sweep.space import SearchSpace, SpaceError


@pytest.fixture(scope="module")
def seqs(pendulum_data):
    return EventSequences.open(pendulum_data(300, seed=3))


# ---------------------------------------------------------------------------------------------
# RankMe on hand-made matrices


def test_rankme_of_a_rank_one_matrix_is_one():
    u = np.random.default_rng(0).normal(size=(50, 1))
    v = np.random.default_rng(1).normal(size=(1, 8))
    assert rankme(u @ v) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_rankme_of_k_orthogonal_equal_norm_directions_is_k(k):
    # k orthogonal rows of equal norm (scaled identity rows, rotated) embedded in 8 dimensions
    q, _ = np.linalg.qr(np.random.default_rng(k).normal(size=(8, 8)))
    z = 3.0 * np.eye(k, 8) @ q
    assert rankme(z) == pytest.approx(k, rel=1e-4)


def test_rankme_is_scale_free_and_nan_on_bad_input():
    z = np.random.default_rng(0).normal(size=(40, 6))
    assert rankme(z) == pytest.approx(rankme(1000.0 * z))
    assert 1.0 < rankme(z) <= 6.0
    assert np.isnan(rankme(np.full((4, 3), np.nan)))
    assert np.isnan(rankme(np.zeros((4, 3))))


# ---------------------------------------------------------------------------------------------
# the subset and the probe


def test_subset_holds_no_test_id_and_is_fixed(seqs):
    test_rows = set(seqs.indices("test").tolist())
    assert test_rows
    for labelled in (True, False):
        for size in (50, 10_000):
            rows = subset_rows(seqs, labelled, size=size, seed=0)
            assert not (set(rows.tolist()) & test_rows)
            assert len(rows) == min(size, len(seqs.indices("train", "val")))
            assert np.array_equal(rows, subset_rows(seqs, labelled, size=size, seed=0))
    # labelled: every row has a target
    assert not np.isnan(seqs.targets[subset_rows(seqs, True, size=100)]).any()


def test_linear_probe_scores_are_oriented_higher_is_better():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = x[:, 0] * 2.0 + 0.1 * rng.normal(size=200)
    good = linear_probe_cv(x, y, "regression")
    bad = linear_probe_cv(rng.normal(size=(200, 4)), y, "regression")
    assert good["probe_score"] > 0.95 and bad["probe_score"] < 0.1
    assert good["probe_mse"] < bad["probe_mse"]
    labels = (x[:, 1] > 0).astype(float)
    assert linear_probe_cv(x, labels, "binary")["probe_score"] > 0.95
    classes = np.digitize(x[:, 2], [-0.5, 0.5]).astype(float)
    assert linear_probe_cv(x, classes, "multiclass")["probe_accuracy"] > 0.8
    assert np.isnan(linear_probe_cv(np.full((20, 2), np.nan), y[:20], "regression")["probe_score"])


def test_scorer_reports_probe_and_rankme_on_a_real_encoder(seqs):
    from mlem_ray.config import make_config
    from mlem_ray.models.build import build_encoder

    cfg = make_config("coles", {"model.hidden": 16})
    encoder = build_encoder(cfg, seqs.schema, seqs.schema.max_len)
    scorer = SelectionScorer(seqs, "probe", max_len=seqs.schema.max_len, size=100)
    out = scorer(encoder, "cpu")
    assert set(out) >= {"probe_score", "probe_mse", "rankme", "selection_seconds"}
    assert np.isfinite(out["probe_score"]) and 1.0 <= out["rankme"] <= 16.0
    assert out == {**scorer(encoder, "cpu"), "selection_seconds": out["selection_seconds"]}  # deterministic
    assert encoder.training  # left in the mode it was in


# ---------------------------------------------------------------------------------------------
# one notion of best


ROWS = [
    {"trial_id": "a", "selection_value": 0.9, "selection_mode": "max", "primary_value": 0.50, "primary_mode": "min"},
    {"trial_id": "b", "selection_value": 0.8, "selection_mode": "max", "primary_value": 0.40, "primary_mode": "min"},
    {"trial_id": "c", "selection_value": 0.1, "selection_mode": "max", "primary_value": 0.10, "primary_mode": "min"},
    {"trial_id": "d", "selection_value": float("nan"), "selection_mode": "max", "primary_value": 0.05,
     "primary_mode": "min"},
]


def test_best_and_teacher_use_each_columns_direction():
    assert leaderboard.best(ROWS)["trial_id"] == "d"  # downstream, lower is better
    assert leaderboard.best(ROWS, "selection")["trial_id"] == "a"  # in-trial, higher is better
    assert [r["trial_id"] for r in leaderboard.ranked(ROWS)] == ["a", "b", "c"]  # NaN left out
    # the teacher: the best downstream among the 2 best by the in-trial score
    assert leaderboard.pick_teacher(ROWS, finalists=2)["trial_id"] == "b"
    assert leaderboard.pick_teacher(ROWS, finalists=3)["trial_id"] == "c"
    assert leaderboard.pick_teacher([], finalists=3) is None


def test_leaderboard_append_is_atomic_and_reads_back(tmp_path):
    board = leaderboard.read(tmp_path)
    assert board.empty
    board = leaderboard.append(tmp_path, board, ROWS[0])
    board = leaderboard.append(tmp_path, board, ROWS[1])
    again = leaderboard.read(tmp_path)
    assert list(again["trial_id"]) == ["a", "b"]
    # one row object per trial beside the snapshot, and no temp file left
    assert sorted(p.name for p in tmp_path.iterdir()) == [leaderboard.FILE, leaderboard.ROWS]
    assert sorted(p.name for p in (tmp_path / leaderboard.ROWS).iterdir()) == ["a.json", "b.json"]


# ---------------------------------------------------------------------------------------------
# val_loss refused where the stage rescales the loss


W_ALIGN_ONLY = """
method: mlem
sweep: {trials: 4, epochs: 2, selection: val_loss}
params:
  objective.w_align: {type: log_float, low: 1.0, high: 1000.0}
"""


@pytest.mark.parametrize("key, dist", [
    ("objective.w_align", "{type: log_float, low: 1.0, high: 1000.0}"),
    ("objective.margin", "{type: float, low: 0.3, high: 1.0}"),
    ("data.slice_max", "{type: int, low: 30, high: 60}"),
])
def test_val_loss_refused_for_a_space_that_rescales_the_loss(tmp_path, key, dist):
    method = "mlem" if "align" in key else "coles"
    path = tmp_path / "s.yaml"
    path.write_text(f"method: {method}\nsweep: {{selection: val_loss}}\nparams:\n  {key}: {dist}\n")
    with pytest.raises(SpaceError, match=f"{path}: sweep.selection: val_loss cannot rank trials that sweep {key}"):
        SearchSpace.load(path)
    # the same space ranked by the probe (or by default) loads
    path.write_text(f"method: {method}\nparams:\n  {key}: {dist}\n")
    assert SearchSpace.load(path).stages[method].sweep.selection == ""
    # val_loss stays allowed where nothing rescales the loss
    path.write_text(f"method: {method}\nsweep: {{selection: val_loss}}\nparams:\n  optim.lr: {{type: float, low: 0.001, high: 0.01}}\n")
    assert SearchSpace.load(path).stages[method].sweep.mode == "min"


def test_cli_refuses_val_loss_space_with_one_line_and_exit_2(tmp_path):
    space = tmp_path / "w_align.yaml"
    space.write_text(W_ALIGN_ONLY)
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "mlem_ray", "sweep", "--space", str(space), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "objective.w_align" in lines[0] and str(space) in lines[0], proc.stderr
    assert not out.exists()
