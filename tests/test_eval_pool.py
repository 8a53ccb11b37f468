"""A pool of evaluation actors on a real (local, 2-CPU) Ray instance: two actors scoring the trials
of one stage write one leaderboard with one row per trial; killing one actor mid-queue loses no
row and scores none twice; a resumed sweep re-scores nothing."""
import sys
import threading
import time

import pytest
import yaml
from helpers import FAST_PROBE, make_pendulum

ray = pytest.importorskip("ray")

from mlem_ray.config import make_config  # noqa: E402
from mlem_ray.evaluation import leaderboard  # noqa: E402
from mlem_ray.evaluation.actor import ACTOR_OPTIONS, Evaluator, EvaluatorPool, pool_names  # noqa: E402
from mlem_ray.evaluation.trial import Selection, TrialRecord  # noqa: E402
from mlem_ray.sweep.pipeline import SweepJob, evaluator_name, run_sweep  # noqa: E402
from mlem_ray.training import LocalReporter, train  # noqa: E402

pytestmark = pytest.mark.ray

SELECTION = Selection(selection_metric="val_loss", selection_mode="min", selection_value=1.0, val_loss=1.0)


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="mlem_ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pendulum(tmp_path_factory.mktemp("data") / "p", 240, seed=5)


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = make_config("coles", {"data.path": str(data), "model.hidden": 16, "data.batch_size": 16,
                                "data.slice_min": 5, "data.slice_max": 20, "train.epochs": 1,
                                "train.steps_per_epoch": 2})
    train(cfg, LocalReporter(run, stream=None))
    return run / "best"


class SlowEvaluator(Evaluator):
    """Scores slowly, so that calls are still queued at both actors when the test looks (tiny
    checkpoints otherwise score within a second of each other)."""

    def score(self, *args, **kwargs):
        time.sleep(1.0)
        return super().score(*args, **kwargs)


def slow_pool(out, data, count: int) -> EvaluatorPool:
    names = pool_names(evaluator_name(out), count)
    actors = [ray.remote(SlowEvaluator).options(name=n, namespace="mlem_ray", get_if_exists=True, num_cpus=0,
                                                **ACTOR_OPTIONS).remote(str(out), str(data), folds=2, tree_iters=20,
                                                                        baseline_owner=(i == 0))
              for i, n in enumerate(names)]
    return EvaluatorPool(names, actors)


def test_killing_one_actor_of_two_mid_queue_still_gives_one_row_per_trial(tmp_path, data, checkpoint):
    out = tmp_path / "sweep"
    out.mkdir()
    pool = slow_pool(out, data, 2)
    pids = [i["pid"] for i in pool.info()]
    trials = [f"t{i}" for i in range(6)]
    refs = [pool.score(TrialRecord(t, "teacher", "coles", str(checkpoint), SELECTION, {"optim.lr": 0.01 * (i + 1)}))
            for i, t in enumerate(trials)]
    # least busy first: the six trials alternate between the two actors
    assert [pool._assigned[t] for t in trials] == [0, 1, 0, 1, 0, 1]
    # a trial sent again goes to the same actor, queues behind its first call and scores nothing
    again = pool.score(TrialRecord("t1", "teacher", "coles", str(checkpoint), SELECTION))
    deadline = time.time() + 120
    while time.time() < deadline and len(leaderboard.read(out)) < 1:
        time.sleep(0.1)
    at_kill = len(leaderboard.read(out))
    assert 1 <= at_kill < 6, f"the kill did not land mid-queue ({at_kill} rows)"
    ray.kill(pool.actors[1], no_restart=False)  # its running call and its queued calls are re-run
    rows = ray.get(refs, timeout=300)
    assert ray.get(again, timeout=60)["trial_id"] == "t1"
    board = leaderboard.read(out)
    assert sorted(board["trial_id"]) == trials and board["trial_id"].is_unique
    assert {r["trial_id"] for r in rows} == set(trials) and all(r["status"] == "ok" for r in rows)
    after = pool.info()
    assert after[0]["pid"] == pids[0] and after[1]["pid"] != pids[1]  # only the killed one restarted
    # the restarted actor found the rows written before its death on disk, and scored each trial once
    assert after[1]["restored_rows"] >= at_kill - 1
    assert after[0]["scored"] == 3 and after[1]["scored"] <= 3
    assert (board.sort_values("trial_id")["scored_at"].to_numpy() == sorted_by_id(rows)).all()
    # leaderboard.parquet, the snapshot, holds every row once the driver rewrites it (as a stage's end does)
    assert len(leaderboard.write_snapshot(out)) == 6
    import pandas as pd

    assert sorted(pd.read_parquet(out / leaderboard.FILE)["trial_id"]) == trials
    pool.kill()


def sorted_by_id(rows):
    return [r["scored_at"] for r in sorted(rows, key=lambda r: r["trial_id"])]


def test_two_actors_scoring_a_six_trial_stage_give_six_rows_and_a_resume_rescores_none(tmp_path, data):
    out = tmp_path / "sweep"
    doc = {"method": "coles", "sweep": {"trials": 6, "scheduler": "none", "epochs": 1, "finalists": 1,
                                        "selection": "rankme"},
           "params": {"optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-2}, "model.hidden": 16,
                      "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20, "train.steps_per_epoch": 2}}
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(doc))
    pool = slow_pool(out, data, 2)  # the sweep finds these actors by name, as a resumed driver would
    job = SweepJob(out=str(out), data=str(data), space=str(space), **FAST_PROBE, eval_actors=2)
    run_sweep(job)
    board = leaderboard.read(out)
    assert len(board) == 6 and board["trial_id"].is_unique
    assert set(board["trial_id"]) == {p.name for p in (out / "coles").iterdir() if p.is_dir()}
    import pandas as pd

    assert sorted(pd.read_parquet(out / leaderboard.FILE)["trial_id"]) == sorted(board["trial_id"])
    scored = [i["scored"] for i in pool.info()]
    assert sum(scored) == 6 and min(scored) >= 1, scored  # both actors scored trials
    assert (out / leaderboard.BASELINE_FILE).exists()  # by one actor only: the first
    run_sweep(SweepJob(out=str(out)), resume=True)
    assert [i["scored"] for i in pool.info()] == scored  # nothing scored again
    resumed = leaderboard.read(out)
    assert list(resumed["scored_at"]) == list(board["scored_at"])
    pool.kill()
