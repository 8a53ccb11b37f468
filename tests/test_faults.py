"""Faults a sweep survives: a scoring that fails (a row with status failed, the stage goes on), a
trial that errors (a row with status errored and its reason), the evaluation actor's retry rules
(retried when its process dies, never when a call raises), and the report listing all of them."""
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from mlem_ray.config import make_config
from mlem_ray.evaluation import leaderboard
from mlem_ray.evaluation.actor import Evaluator
from mlem_ray.evaluation.trial import Selection, TrialRecord
from mlem_ray.sweep.report import build_report
from mlem_ray.training import LocalReporter, train

ray = pytest.importorskip("ray")

SMALL = {"model.hidden": 16, "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20, "train.epochs": 1,
         "train.steps_per_epoch": 2}


@pytest.fixture(scope="module")
def data(pendulum_data):
    return pendulum_data(240, seed=5)


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory):
    """A trained CoLES checkpoint and a copy whose encoder weights are NaN (its embeddings are NaN)."""
    root = tmp_path_factory.mktemp("ckpts")
    train(make_config("coles", {**SMALL, "data.path": str(data)}), LocalReporter(root / "run", stream=None))
    good = root / "run" / "best"
    import shutil

    shutil.copytree(good, root / "nan")
    state = torch.load(root / "nan" / "model.pt", weights_only=True)
    state["encoder"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                        for k, v in state["encoder"].items()}
    torch.save(state, root / "nan" / "model.pt")
    return good, root / "nan"


class CountingEvaluator(Evaluator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def _evaluate(self, checkpoint):
        self.calls += 1
        return super()._evaluate(checkpoint)


SELECTION = Selection(selection_metric="probe_score", selection_mode="max", selection_value=0.5, val_loss=1.0)


def test_a_failed_scoring_is_a_row_with_its_reason_and_is_not_retried(tmp_path, data, checkpoints):
    good, nan = checkpoints
    ev = CountingEvaluator(tmp_path, data, folds=2, tree_iters=20)
    failed = ev.score(TrialRecord("t_nan", "teacher", "coles", str(nan), SELECTION, {"optim.lr": 0.01}))
    assert failed["status"] == "failed" and "NaN" in failed["error"] and "\n" not in failed["error"]
    assert failed["primary_value"] != failed["primary_value"]  # NaN: never ranked
    ok = ev.score(TrialRecord("t_ok", "teacher", "coles", str(good), replace(SELECTION, selection_value=0.1),
                             {"optim.lr": 0.02}))
    assert ok["status"] == "ok" and ok["error"] == ""
    # asked again (a resumed driver re-submits): the stored row, no second scoring
    assert ev.score(TrialRecord("t_nan", "teacher", "coles", str(nan), SELECTION))["status"] == "failed"
    assert ev.calls == 2
    # an errored trial is listed, and replaced once a re-run of it is scored
    ev.record_error(TrialRecord("t_err", "teacher", "coles"), "Traceback...\nConfigError: data.batch_size must be > 0")
    ev.record_error(TrialRecord("t_redo", "teacher", "coles"), "RayActorError: the actor died")
    assert ev.score(TrialRecord("t_redo", "teacher", "coles", str(good), SELECTION))["status"] == "ok"
    board = leaderboard.read(tmp_path)
    assert sorted(board["trial_id"]) == ["t_err", "t_nan", "t_ok", "t_redo"]
    assert dict(zip(board["trial_id"], board["status"])) == {"t_nan": "failed", "t_ok": "ok", "t_err": "errored",
                                                              "t_redo": "ok"}
    # the failed row has the best selection value but is never picked
    assert leaderboard.pick_teacher(board, finalists=1)["trial_id"] in ("t_ok", "t_redo")
    assert {r["trial_id"] for r in leaderboard.ranked(board)} == {"t_ok", "t_redo"}
    text = build_report(tmp_path)
    assert "## Failed and errored trials (2)" in text
    assert "teacher t_nan (coles): failed: ValueError: embeddings contain NaN or inf" in text
    assert "teacher t_err (coles): errored: ConfigError: data.batch_size must be > 0" in text


def test_a_report_of_only_failed_trials_still_lists_them(tmp_path, data, checkpoints):
    ev = Evaluator(tmp_path, data, folds=2, tree_iters=20)
    ev.score(TrialRecord("t_nan", "teacher", "coles", str(checkpoints[1]), SELECTION))
    text = build_report(tmp_path)
    assert "No trial was scored" in text and "t_nan" in text


class BaselineCounting(Evaluator):
    baselines = 0

    def _score_baseline(self):
        self.baselines += 1
        return super()._score_baseline()


def test_the_warm_up_scores_the_baseline_before_any_trial_and_leaves_its_failures_to_the_first_score(
        tmp_path, data, checkpoints):
    """warm_up (run as each actor is created, while the first trials train) opens the data set and
    scores the aggregates baseline; the first trial's score then reuses both. A warm-up that fails
    (here the data set is not there) raises nothing: the first score meets the failure again and
    records it as that trial's row, as it did before there was a warm-up."""
    (tmp_path / "s").mkdir()
    ev = BaselineCounting(tmp_path / "s", data, folds=2, tree_iters=20)
    ev.warm_up()
    assert ev.baselines == 1 and leaderboard.read_baseline(tmp_path / "s") == ev.baseline
    assert ev.score(TrialRecord("t_ok", "teacher", "coles", str(checkpoints[0]), SELECTION))["status"] == "ok"
    ev.warm_up()  # a restarted actor warms up again: nothing left to do
    assert ev.baselines == 1

    (tmp_path / "b").mkdir()
    broken = BaselineCounting(tmp_path / "b", tmp_path / "no-such-data", folds=2, tree_iters=20)
    broken.warm_up()
    row = broken.score(TrialRecord("t", "teacher", "coles", str(checkpoints[0]), SELECTION))
    assert row["status"] == "failed" and "no-such-data" in row["error"] and "\n" not in row["error"], row
    assert leaderboard.read_baseline(tmp_path / "b") is None


# ---------- on Ray ----------


@pytest.fixture(scope="module")
def worker_tmp(tmp_path_factory) -> Path:
    """The temp dir of every Ray worker of this module: what a sweep leaves there is seen."""
    return tmp_path_factory.mktemp("worker_tmp")


@pytest.fixture(scope="module")
def ray_options(worker_tmp):
    return {"runtime_env": {"env_vars": {"TMPDIR": str(worker_tmp)}}}


class Probe:
    """Stands in for the evaluation actor, with its options, to check Ray's retry rules."""

    def raises(self, log: str) -> None:
        with open(log, "a") as f:
            f.write("call\n")
        raise ValueError("deterministic failure")

    def dies_once(self, marker: str) -> int:
        if not Path(marker).exists():
            Path(marker).write_text("died")
            os._exit(1)
        return os.getpid()


@pytest.mark.ray
def test_the_actor_retries_a_call_only_when_its_process_died(ray_session, tmp_path):
    from mlem_ray.evaluation.actor import ACTOR_OPTIONS

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    actor = ray.remote(Probe).options(**ACTOR_OPTIONS).remote()
    log = tmp_path / "calls.log"
    with pytest.raises(ValueError, match="deterministic failure"):
        ray.get(actor.raises.remote(str(log)), timeout=60)
    assert log.read_text().count("call") == 1  # raised: not retried
    pid = ray.get(actor.dies_once.remote(str(tmp_path / "marker")), timeout=120)
    assert (tmp_path / "marker").exists() and pid > 0  # the process died; the call ran again in a new one
    ray.kill(actor)


class FailFirstEvaluator(Evaluator):
    """Its first scoring raises, as a probe that cannot fit would."""

    def _evaluate(self, checkpoint):
        if self.board.empty:
            raise RuntimeError("probe exploded")
        return super()._evaluate(checkpoint)


@pytest.mark.ray
def test_a_stage_goes_on_past_a_failed_scoring_and_an_errored_trial(ray_session, worker_tmp, tmp_path, data):
    from ray import tune

    from mlem_ray.sweep.pipeline import _resolve_metrics, evaluator_name
    from mlem_ray.sweep.space import SearchSpace
    from mlem_ray.evaluation.actor import EvaluatorPool
    from mlem_ray.sweep.tuner import StageJob, StageOutput, StageSearch, TrialResources, run_stage

    doc = {"method": "coles", "sweep": {"trials": 3, "epochs": 1, "scheduler": "none", "selection": "rankme", "finalists": 1},
           "params": {"model.hidden": 16, "data.slice_min": 5, "data.slice_max": 20, "train.steps_per_epoch": 2}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(doc))
    stages = _resolve_metrics(SearchSpace.load(tmp_path / "space.yaml").stages, str(data))
    name, stage = next(iter(stages.items()))
    out = tmp_path / "sweep"
    out.mkdir()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    actor_name = evaluator_name(out)
    from mlem_ray.evaluation.actor import ACTOR_OPTIONS

    actor = ray.remote(FailFirstEvaluator).options(name=actor_name, namespace="mlem_ray", **ACTOR_OPTIONS).remote(
        str(out), str(data), folds=2, tree_iters=20)
    # batch size 0 cannot even build a config: that trial errors (twice: FailureConfig retries it once)
    rows = run_stage(StageJob(name, stage, {"data.path": str(data), "train.threads": 1}), StageOutput(out),
                     EvaluatorPool.of(actor, actor_name), TrialResources(cpus_per_trial=1.0, max_concurrent=1),
                     StageSearch(param_space={"data.batch_size": tune.grid_search([16, 0, 16]), "train.seed": 0}))
    by_status = sorted(r["status"] for r in rows)
    assert by_status == ["errored", "failed", "ok"], rows
    errored = next(r for r in rows if r["status"] == "errored")
    assert "data.batch_size" in errored["error"]
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["error"] == "RuntimeError: probe exploded"
    board = leaderboard.read(out)
    assert len(board) == 3 and board["trial_id"].is_unique
    text = build_report(out)
    assert "## Failed and errored trials (2)" in text and "probe exploded" in text
    ray.kill(actor)
    # the trials' per-epoch checkpoint copies went where the test looks, and none was left there
    import tempfile

    assert ray.get(ray.remote(tempfile.gettempdir).remote()) == str(worker_tmp)
    assert not list(worker_tmp.glob("mlem_ray_ckpt_*"))


# ---------- one driver per sweep directory ----------


def test_a_second_sweep_into_a_live_sweeps_out_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    import json
    import signal
    import socket
    import subprocess
    import time

    from mlem_ray.cli import main
    from mlem_ray.sweep.lock import FILE, sweep_lock

    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"out": str(out)}))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mlem_ray.sweep.lock import sweep_lock\n"
        f"with sweep_lock({str(out)!r}):\n    print('locked', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock_before = (out / FILE).read_text()
        code = main(["sweep", "--out", str(out), "--resume"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"is in use by another sweep (pid {holder.pid}" in err
        assert (out / FILE).read_text() == lock_before
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed driver leaves its lock behind
        holder.wait()
    assert json.loads((out / FILE).read_text())["pid"] == holder.pid
    with sweep_lock(out):
        assert json.loads((out / FILE).read_text())["pid"] == os.getpid()
    assert not (out / FILE).exists() and not list(out.glob(f"{FILE}*"))
    # a lock from another host cannot be checked from here: taken over
    (out / FILE).write_text(json.dumps({"host": socket.gethostname() + "-elsewhere", "pid": os.getpid(),
                                        "since": time.time()}))
    with sweep_lock(out):
        assert json.loads((out / FILE).read_text())["host"] == socket.gethostname()
    # a refused start into a new directory leaves no directory behind
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with sweep_lock(fresh):
            raise RuntimeError("refused later")
    assert not fresh.exists()


# ---------- exact resume ----------


def test_the_cpu_budget_spent_before_a_resume_still_counts(tmp_path, data):
    """A run resumed with a CPU budget its first part already used up stops at once: the budget
    is the run's, not the process's. Without the carry-over it would train the next epoch whole."""
    first = make_config("coles", {**SMALL, "data.path": str(data), "train.steps_per_epoch": 3})
    train(first, LocalReporter(tmp_path / "run", stream=None))
    state = torch.load(tmp_path / "run" / "last" / "model.pt", weights_only=True)["trainer"]
    assert state["cpu_spent"] > 0 and len(state["rng"]) == 1 and "torch" in state["rng"][0]
    resumed = make_config("coles", {**SMALL, "data.path": str(data), "train.steps_per_epoch": 3, "train.epochs": 3,
                                    "train.budget_cpu_s": state["cpu_spent"] * 0.999})
    metrics = train(resumed, LocalReporter(tmp_path / "run", stream=None), resume=tmp_path / "run" / "last")
    assert metrics["epoch"] == 1 and "train_loss" not in metrics  # stopped before its first step


def test_each_rank_resumes_its_own_rng_stream():
    from mlem_ray.training.loop import Runtime, _restore_rng

    cfg = make_config("coles", {"train.seed": 7})
    streams = []
    for seed in (100, 101):
        torch.manual_seed(seed)
        streams.append({"torch": torch.get_rng_state()})
    two_ranks = {"epoch": 2, "rng": streams, "torch_rng": streams[0]["torch"]}
    for rank in (0, 1):
        _restore_rng(two_ranks, cfg, Runtime(rank=rank, world_size=2))
        torch.manual_seed(100 + rank)
        expected = torch.rand(3)
        _restore_rng(two_ranks, cfg, Runtime(rank=rank, world_size=2))
        assert torch.equal(torch.rand(3), expected)
    # saved by one rank, resumed by two: rank 0 continues it, rank 1 starts its own stream
    one_rank = {"epoch": 2, "rng": streams[:1], "torch_rng": streams[0]["torch"]}
    _restore_rng(one_rank, cfg, Runtime(rank=1, world_size=2))
    assert torch.initial_seed() == 7 + 1 + 1000 * 3
    _restore_rng(one_rank, cfg, Runtime(rank=0, world_size=2))
    torch.manual_seed(100)
    expected = torch.rand(3)
    _restore_rng(one_rank, cfg, Runtime(rank=0, world_size=2))
    assert torch.equal(torch.rand(3), expected)
    # a checkpoint from before per-rank streams (torch_rng only) still resumes rank 0 exactly
    _restore_rng({"epoch": 0, "torch_rng": streams[1]["torch"]}, cfg, Runtime())
    assert torch.equal(torch.rand(3), (torch.manual_seed(101), torch.rand(3))[1])
