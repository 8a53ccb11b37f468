"""The records that replace argument lists: the leaderboard row type (evaluation/leaderboard.py: Row)
reads old rows with its defaults and writes a stored row back byte for byte; the trial record the
sweep hands the evaluation actors (evaluation/trial.py) pickles as Ray sends it."""
from __future__ import annotations

import json
import math
import pickle

import pandas as pd
import ray.cloudpickle

from mlem_ray.evaluation import leaderboard
from mlem_ray.evaluation.actor import Evaluator
from mlem_ray.evaluation.leaderboard import Row
from mlem_ray.evaluation.trial import Selection, TrialRecord
from mlem_ray.sweep.report_board import load_leaderboard

# A row object as the actor writes it for a trial of several seeds in a multi-objective stage, with
# a column this version does not know (a newer driver's) at the end.
FULL = {
    "trial_id": "a1", "stage": "teacher", "method": "coles", "checkpoint": "/sweep/teacher/a1/checkpoint_000001",
    "selection_metric": "probe_score_robust", "selection_mode": "max", "selection_value": 0.61, "val_loss": 1.25,
    "params": "{\"optim.lr\": 0.003}", "seed": 2, "reseed_of": "", "primary_metric": "tree_cv_roc_auc_mean",
    "primary_mode": "max", "primary_value": 0.812, "scored_at": 1764590000.25, "status": "ok", "error": "",
    "selection_mean": 0.64, "selection_std": 0.03, "repeats": 3.0, "cost_metric": "cost_params",
    "cost_value": 5321.0, "tree_cv_roc_auc_mean": 0.812, "tree_test_roc_auc": float("nan"),
    "anisotropy": 0.1, "n_labelled": 240.0, "from_a_newer_driver": "kept",
}


def test_a_full_row_round_trips_to_the_same_json_bytes():
    text = json.dumps(FULL)
    row = Row.from_json(json.loads(text))
    assert json.dumps(row.to_json()) == text
    assert row.repeats == 3.0 and row.cost_metric == "cost_params" and row.seed == 2
    assert row.metrics["from_a_newer_driver"] == "kept" and math.isnan(row.metrics["tree_test_roc_auc"])
    assert row.swept() == {"optim.lr": 0.003}


def test_an_old_row_loads_with_the_defaults_and_writes_back_unchanged():
    old = {"trial_id": "t0", "method": "coles", "checkpoint": "/c", "params": "{}", "primary_value": 0.5,
           "tree_cv_mse_mean": 0.5}  # before stages, statuses, selection figures, repeats and costs
    row = Row.from_json(old)
    assert (row.stage, row.status, row.error, row.reseed_of, row.seed) == ("coles", "ok", "", "", 0)
    assert (row.primary_metric, row.primary_mode, row.selection_metric) == ("primary", "min", "")
    assert math.isnan(row.selection_value) and math.isnan(row.scored_at) and row.repeats is None
    assert leaderboard.is_ok(row.flat()) and row.metrics == {"tree_cv_mse_mean": 0.5}
    # what a reader does not know is kept, and a frame gets every column of the row type
    board = leaderboard.frame([row, Row.from_json(FULL)])
    assert set(leaderboard.BOOKKEEPING) <= set(board.columns) and "from_a_newer_driver" in board.columns
    assert list(board["stage"]) == ["coles", "teacher"]


def test_a_snapshot_frame_record_takes_defaults_for_its_gaps():
    """The snapshot's frame fills a column another row has with None or NaN: text and whole-number
    columns then take the defaults, a float column keeps NaN."""
    frame = pd.DataFrame([FULL, {"trial_id": "e1", "stage": "teacher", "method": "coles", "status": "errored",
                                 "error": "boom", "params": "{}", "seed": 0, "scored_at": 1.0}])
    errored = leaderboard.rows_of(frame)[1]
    assert errored.status == "errored" and errored.selection_metric == "" and errored.seed == 0
    assert math.isnan(errored.primary_value) and errored.reseed_of == ""


def test_an_old_sweep_directory_reports_through_the_row_type(tmp_path):
    """A board with only the oldest columns, in the snapshot and as row objects, loads with every
    column the report reads."""
    pd.DataFrame([{"trial_id": "s1", "method": "coles", "primary_value": 0.4}]).to_parquet(tmp_path / leaderboard.FILE)
    (tmp_path / leaderboard.ROWS).mkdir()
    (tmp_path / leaderboard.ROWS / "s2.json").write_text(json.dumps({"trial_id": "s2", "method": "coles",
                                                                    "primary_value": 0.3}))
    board = load_leaderboard(tmp_path)
    assert sorted(board["trial_id"]) == ["s1", "s2"]
    assert set(board["status"]) == {"ok"} and set(board["reseed_of"]) == {""} and set(board["stage"]) == {"coles"}


def test_the_actor_writes_an_errored_row_in_the_stored_format(tmp_path):
    """The row object of an errored trial has exactly the keys it always had, in order."""
    ev = Evaluator(tmp_path, tmp_path / "no-data-needed")
    row = ev.record_error(TrialRecord("t_err", "teacher", "coles", params={"optim.lr": 0.01}, seed=1),
                          "Traceback...\nValueError: bad")
    stored = json.loads((tmp_path / leaderboard.ROWS / "t_err.json").read_text())
    assert list(stored) == ["trial_id", "stage", "method", "checkpoint", "params", "seed", "reseed_of", "scored_at",
                            "status", "error"]
    assert stored == row and stored["error"] == "ValueError: bad" and stored["params"] == "{\"optim.lr\": 0.01}"
    assert json.dumps(Row.from_json(stored).to_json()) == json.dumps(stored)


def test_a_trial_record_pickles_as_ray_sends_it():
    selection = Selection(selection_metric="probe_score_robust", selection_mode="max", selection_value=0.5,
                          val_loss=1.0, selection_mean=0.6, selection_std=0.1, repeats=2.0)
    trial = TrialRecord("t1", "teacher", "coles", "s3://bucket/sweep/teacher/t1/checkpoint_000000", selection,
                        {"optim.lr": 0.01, "model.encoder": "gru"}, seed=3, reseed_of="t0", trial_dir="/sweep/t1")
    for dumps, loads in ((pickle.dumps, pickle.loads), (ray.cloudpickle.dumps, ray.cloudpickle.loads)):
        assert loads(dumps(trial)) == trial
    # the row's in-trial columns: typed, the optional ones only where set
    assert selection.columns() == {"selection_metric": "probe_score_robust", "selection_mode": "max",
                                   "selection_value": 0.5, "val_loss": 1.0, "selection_mean": 0.6,
                                   "selection_std": 0.1, "repeats": 2.0}
    assert Selection().columns()["selection_metric"] == "val_loss"


def test_a_callback_saved_by_an_older_driver_restores_with_its_stage_scoring():
    """Tune restores a stage's callbacks from the experiment it saved: one pickled by an older
    driver, with the stage's figures as loose attributes, still builds the trial records."""
    from mlem_ray.sweep.tuner import ScoreOnComplete, StageScoring

    old = ScoreOnComplete.__new__(ScoreOnComplete)
    old.__dict__.update(actor_name=["evaluator-x"], stage="teacher", method="coles", swept=["optim.lr"],
                        metric="probe_score", mode="max", reseed_of="", out="/sweep")
    restored = pickle.loads(pickle.dumps(old))
    assert restored.scoring == StageScoring("teacher", "coles", ("optim.lr",), "probe_score", "max", "", "/sweep")
    record = restored.scoring.record("t1", {"optim.lr": 0.01, "train.seed": 4, "model.hidden": 8},
                                     ("/sweep/teacher/t1/checkpoint_000002", {"probe_score": 0.7, "val_loss": 1.5}))
    assert record == TrialRecord("t1", "teacher", "coles", "/sweep/teacher/t1/checkpoint_000002",
                                 Selection("probe_score", "max", 0.7, 1.5), {"optim.lr": 0.01}, seed=4)
    # a fresh callback pickles as it is
    fresh = ScoreOnComplete("evaluator-x", restored.scoring)
    assert pickle.loads(pickle.dumps(fresh)).scoring == restored.scoring
