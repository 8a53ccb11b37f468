"""Sweeps on a real (local, 2-CPU) Ray instance: an evaluation actor killed mid-sweep, GPUs that do
not exist, and the in-trial score's ranking. A finished two-stage sweep's TensorBoard files,
leaderboard and teacher hand-over are checked in test_inspect.py, on the sweep that module runs."""
import json
import sys
import threading
import time

import pytest
from helpers import FAST_PROBE, two_stage_space
import yaml

ray = pytest.importorskip("ray")

from mlem_ray.evaluation.actor import Evaluator
from mlem_ray.evaluation.leaderboard import read as read_leaderboard  # noqa: E402
from mlem_ray.evaluation import leaderboard  # noqa: E402
from mlem_ray.sweep.pipeline import SweepError, SweepJob, evaluator_name, run_sweep  # noqa: E402

pytestmark = pytest.mark.ray

TINY = two_stage_space(
    {"trials": 4, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2, "epochs": 2, "finalists": 4},
    {"trials": 2, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2, "epochs": 2, "finalists": 1})


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_session):
    return ray_session


@pytest.fixture(scope="module")
def data(pendulum_data):
    return pendulum_data(240, seed=5)


def space_file(tmp_path, doc=TINY):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class SlowEvaluator(Evaluator):
    """Scores slowly, so that rows are still queued when the test kills the actor (tiny trials
    otherwise finish within a second of each other)."""

    def score(self, *args, **kwargs):
        time.sleep(1.5)
        return super().score(*args, **kwargs)


def test_killing_the_evaluation_actor_mid_sweep_loses_no_row(tmp_path, data):
    out = tmp_path / "sweep"
    doc = {"method": "coles", **{k: v for k, v in TINY["stages"]["teacher"].items() if k != "method"}}
    doc["sweep"] = {**doc["sweep"], "trials": 4}
    # The sweep finds this actor by name and uses it (as a resumed driver would).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    handle = ray.remote(SlowEvaluator).options(
        name=evaluator_name(out), namespace="mlem_ray", max_concurrency=2, max_restarts=-1,
        max_task_retries=-1).remote(str(out), str(data), **FAST_PROBE)
    pid_before = ray.get(handle.info.remote())["pid"]
    killed = {}

    def killer():
        deadline = time.time() + 240
        while time.time() < deadline and len(read_leaderboard(out)) < 1:
            time.sleep(0.1)
        killed["at_rows"] = len(read_leaderboard(out))
        ray.kill(handle, no_restart=False)
        killed["at"] = time.time()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    run_sweep(SweepJob(out=str(out), data=str(data), space=str(space_file(tmp_path, doc)), **FAST_PROBE))
    thread.join(timeout=10)
    assert killed.get("at_rows", 0) in (1, 2, 3), f"the kill did not land mid-scoring: {killed}"
    board = read_leaderboard(out)
    assert len(board) == 4 and board["trial_id"].is_unique
    # rows after the kill came from a new process, which found the rows written before it on disk
    after = ray.get(handle.info.remote())
    assert after["pid"] != pid_before
    assert after["restored_rows"] >= killed["at_rows"]
    assert (board["scored_at"] > killed["at"]).sum() >= 4 - after["restored_rows"]


def test_gpus_that_do_not_exist_are_refused_fast(tmp_path, data):
    from mlem_ray.training.resources import ResourceError

    t0 = time.time()
    with pytest.raises(ResourceError, match="the Ray cluster has 0"):
        run_sweep(SweepJob(out=str(tmp_path / "s"), data=str(data), space=str(space_file(tmp_path)),
                                gpus_per_worker=1))
    assert time.time() - t0 < 30
    assert not (tmp_path / "s" / "sweep.json").exists()


def test_an_evaluation_gpu_that_does_not_exist_is_refused_fast(tmp_path, data):
    t0 = time.time()
    with pytest.raises(SweepError, match="--eval-gpus 1 but the Ray cluster has 0 GPUs"):
        run_sweep(SweepJob(out=str(tmp_path / "s"), data=str(data), space=str(space_file(tmp_path)), eval_gpus=1))
    assert time.time() - t0 < 30
    assert not (tmp_path / "s" / "sweep.json").exists()


def test_in_trial_score_does_not_reward_the_smallest_margin(tmp_path, data):
    """A stage that sweeps only the margin: val_loss falls with the margin (at 0 the loss is the
    positives' distance alone, and the encoder collapses), so ranking by it would pick margin 0.
    The in-trial probe ranks the collapsed encoder last."""
    doc = {"method": "coles",
           "sweep": {"trials": 3, "scheduler": "none", "epochs": 2, "finalists": 1, "seed": 1, "search": "random"},
           "params": {"objective.margin": {"type": "categorical", "choices": [0.0, 0.8]}, "optim.lr": 1e-2,
                      "model.hidden": 16, "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20,
                      "train.steps_per_epoch": 5}}
    out = tmp_path / "sweep"
    summary = run_sweep(SweepJob(out=str(out), data=str(data), space=str(space_file(tmp_path, doc)), **FAST_PROBE))
    rows = read_leaderboard(out).to_dict("records")
    margins = {json.loads(r["params"])["objective.margin"] for r in rows}
    assert margins == {0.0, 0.8}, "the sampler should have tried both margins"
    assert {r["selection_metric"] for r in rows} == {"probe_score"}
    by_val_loss = min(rows, key=lambda r: r["val_loss"])
    by_probe = leaderboard.best(rows, "selection")
    assert json.loads(by_val_loss["params"])["objective.margin"] == 0.0
    assert json.loads(by_probe["params"])["objective.margin"] == 0.8
    # the Tune side ranked by the same score: each trial's kept checkpoint carries its probe_score
    assert summary["stages"]["coles"]["scored"] == 3
