"""The main job on a real (local, 2-CPU) Ray instance: a two-stage sweep, its TensorBoard files,
the leaderboard, the teacher hand-over, and an evaluation actor killed mid-sweep."""
import json
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import FAST_PROBE, two_stage_space
import yaml

ray = pytest.importorskip("ray")

from mlem_ray.evaluation.actor import Evaluator
from mlem_ray.evaluation.leaderboard import read as read_leaderboard  # noqa: E402
from mlem_ray.evaluation import leaderboard  # noqa: E402
from mlem_ray.evaluation.leaderboard import pick_teacher  # noqa: E402
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


def plugin_events(event_file):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for event in EventFileLoader(str(event_file)).Load():
        for value in event.summary.value:
            yield value.metadata.plugin_data.plugin_name, value.tag


def test_two_stage_sweep_tensorboard_leaderboard_and_teacher(tmp_path, data):
    out = tmp_path / "sweep"
    summary = run_sweep(SweepJob(out=str(out), data=str(data), space=str(space_file(tmp_path)), **FAST_PROBE))
    board = read_leaderboard(out)
    teacher_rows = board[board["stage"] == "teacher"]
    mlem_rows = board[board["stage"] == "mlem"]
    # one row per completed trial, none twice
    assert len(teacher_rows) == 4 and len(mlem_rows) == 2 and board["trial_id"].is_unique
    trial_dirs = {p.name for p in (out / "teacher").iterdir() if p.is_dir()}
    assert set(teacher_rows["trial_id"]) == trial_dirs
    # TensorBoard: Tune's curves per trial, and one HParams session beside them with the downstream metrics
    for trial in trial_dirs:
        tags = [t for f in (out / "teacher" / trial).rglob("events.out.tfevents*") for t in plugin_events(f)]
        plugins = {p for p, _ in tags}
        assert "hparams" in plugins and "scalars" in plugins, plugins
        assert any(t.endswith("val_loss") for _, t in tags)
        session = [t for f in (out / "teacher" / trial / "hparams").rglob("events.out.tfevents*")
                   for _, t in plugin_events(f)]
        assert "downstream/tree_cv_mse_mean" in session and "trial/val_loss" in session
        assert "_hparams_/session_start_info" in session and "_hparams_/experiment" not in tags
    assert list((out / "tensorboard_leaderboard").glob("events.out.tfevents*"))
    # the MLEM stage trained against the best-scored stage-1 checkpoint
    teacher = json.loads((out / "teacher.json").read_text())
    expected = pick_teacher(teacher_rows.to_dict("records"), finalists=4)
    assert teacher["trial_id"] == expected["trial_id"]
    assert teacher["primary_value"] == min(teacher_rows["primary_value"])
    for ckpt in mlem_rows["checkpoint"]:
        cfg = yaml.safe_load((Path(ckpt) / "config.yaml").read_text())
        assert cfg["objective"]["teacher"] == teacher["checkpoint"]
    assert summary["stages"]["mlem"]["best"]["trial_id"] in set(mlem_rows["trial_id"])


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
