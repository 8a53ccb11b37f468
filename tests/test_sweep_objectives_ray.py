"""On a real (local, 2-CPU) Ray instance: a stage of two seeds per trial with a parameter-count cost
reaches the leaderboard with the seeds' mean and std and the cost, its study has two objectives,
and a sweep warm-started from it runs the earlier best config first."""
import json
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import FAST_PROBE, make_pendulum

ray = pytest.importorskip("ray")

from mlem_ray.evaluation import leaderboard  # noqa: E402
from mlem_ray.sweep import optuna_storage  # noqa: E402
from mlem_ray.sweep.pipeline import SweepJob, run_sweep  # noqa: E402

pytestmark = pytest.mark.ray

SPACE = {"method": "coles",
         "sweep": {"trials": 3, "scheduler": "asha", "grace_period": 1, "epochs": 2, "selection": "probe", "selection_size": 100,
                   "repeats": 2, "cost": "params", "finalists": 1},
         "params": {"optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-2},
                    "model.hidden": {"type": "int", "low": 8, "high": 32, "step": 8}, "data.batch_size": 16,
                    "data.slice_min": 5, "data.slice_max": 20, "train.steps_per_epoch": 2}}


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="mlem_ray")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pendulum(tmp_path_factory.mktemp("data") / "p", 160, seed=3)


def test_repeats_and_cost_then_a_warm_start(tmp_path, data):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    first = tmp_path / "first"
    run_sweep(SweepJob(out=str(first), data=str(data), space=str(space), **FAST_PROBE))
    board = leaderboard.read(first)
    assert len(board) == 3 and (board["status"] == "ok").all()
    assert (board["selection_metric"] == "probe_score_robust").all() and (board["repeats"] == 2).all()
    # the objective is mean - std over the two seeds, as the row's own columns say
    assert ((board["selection_mean"] - board["selection_std"] - board["selection_value"]).abs() < 1e-9).all()
    assert (board["selection_std"] >= 0).all()
    # the cost is the encoder's parameter count: it grows with model.hidden
    hidden = board["params"].map(lambda p: json.loads(p)["model.hidden"])
    by_hidden = dict(zip(hidden, board["cost_value"]))
    assert all(by_hidden[a] < by_hidden[b] for a in by_hidden for b in by_hidden if a < b)
    # the trial's checkpoint carries the other seed's inside it
    assert all((leaderboard_ckpt / "repeats" / "seed_1" / "model.pt").exists()
               for leaderboard_ckpt in map(Path, board["checkpoint"]))
    study = optuna.load_study(study_name="coles", storage=optuna_storage.study_storage(first))
    assert len(study.directions) == 2 and study.metric_names == ["probe_score_robust", "cost_params"]

    best = json.loads(leaderboard.best(board)["params"])
    second = tmp_path / "second"
    one_more = {**SPACE, "sweep": {**SPACE["sweep"], "trials": 1, "repeats": 1, "cost": ""}}
    space2 = tmp_path / "space2.yaml"
    space2.write_text(yaml.safe_dump(one_more))
    run_sweep(SweepJob(out=str(second), data=str(data), space=str(space2), **FAST_PROBE, warm_start=str(first)))
    rows = leaderboard.read(second)
    assert len(rows) == 1 and json.loads(rows["params"].iloc[0]) == best


def test_a_budget_sizes_the_stage_from_a_timing_probe_and_stops_there(tmp_path, data):
    space = tmp_path / "space.yaml"
    plain = {**SPACE, "sweep": {**SPACE["sweep"], "repeats": 1, "cost": "", "trials": 2}}
    space.write_text(yaml.safe_dump(plain))
    out = tmp_path / "budgeted"
    run_sweep(SweepJob(out=str(out), data=str(data), space=str(space), **FAST_PROBE, budget="45s"))
    sizes = json.loads((out / "budget.json").read_text())["coles"]
    # measured step and score times, and a stage sized from them for 45 s on the trial slots
    assert sizes["t_step"] > 0 and sizes["time_budget_s"] <= 45
    assert sizes["steps_per_epoch"] >= 1 and sizes["trials"] >= 1
    board = leaderboard.read(out)
    assert 1 <= len(board) <= sizes["trials"]
    cfg = yaml.safe_load((Path(board["checkpoint"].iloc[0]) / "config.yaml").read_text())
    assert cfg["train"]["steps_per_epoch"] == sizes["steps_per_epoch"]
