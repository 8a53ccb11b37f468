"""Ray Train around the one loop: a worker failure restarts from the last checkpoint, GPUs that
do not exist are refused fast, and 2-worker trials run under Tune with ASHA stopping some."""
import json
import time
from pathlib import Path

import pytest
from helpers import FAST_PROBE

ray = pytest.importorskip("ray")

from mlem_ray.cli import main  # noqa: E402
from mlem_ray.config import make_config  # noqa: E402
from mlem_ray.evaluation.leaderboard import read as read_leaderboard  # noqa: E402
from mlem_ray.training import load_encoder  # noqa: E402

pytestmark = pytest.mark.ray
SMALL = {"model.hidden": 16, "data.batch_size": 8, "data.slice_min": 5, "data.slice_max": 20,
         "train.steps_per_epoch": 2}


@pytest.fixture(scope="module")
def ray_options():
    # The dashboard's state API lets Train clean up the placement groups of stopped trials.
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1"}


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_session):
    return ray_session


@pytest.fixture(scope="module")
def data(pendulum_data):
    return pendulum_data(160, seed=2)


def test_a_failed_worker_restarts_from_the_last_checkpoint(data, tmp_path):
    from mlem_ray.training.ray_train import run_distributed

    cfg = make_config("coles", {**SMALL, "data.path": str(data), "train.epochs": 4})
    result = run_distributed(cfg, workers=2, gpus_per_worker=0, storage=tmp_path / "train", name="ft",
                             cpus_per_worker=0.5, max_failures=1,
                             extra={"fail_once_at_epoch": 2, "marker_dir": str(tmp_path / "markers"),
                                    "log_dir": str(tmp_path / "run")})
    assert (tmp_path / "markers" / "failed_once").read_text() == "2"
    started = (tmp_path / "markers" / "epochs_started").read_text().split()
    assert started == ["0", "1", "2", "2", "3"]  # epoch 2 re-run after the restart, 0 and 1 not
    assert result.metrics["epoch"] == 3
    encoder, ckpt = load_encoder(result.checkpoint.path)
    assert ckpt.state["trainer"]["epoch"] == 3 and encoder.out_dim == 16
    # `pretrain --workers N` (log_dir = --out): rank 0 writes every reported epoch as a local run
    # does, metrics.jsonl and TensorBoard scalars, across the restart
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3]
    steps = [e.step for e in EventAccumulator(str(tmp_path / "run")).Reload().Scalars("val_loss")]
    assert steps == [0, 1, 2, 3]
    # the run ended, so its controller and placement group did too: every CPU is free again for
    # the next run in this process (the module's last test needs them all)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.25)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"], ray.available_resources()


def test_gpus_that_do_not_exist_are_refused_within_30s(data, tmp_path, capsys):
    t0 = time.time()
    code = main(["pretrain", "--data", str(data), "--method", "coles", "--workers", "2", "--gpus-per-worker", "1",
                 "--out", str(tmp_path / "g")])
    assert code == 2 and time.time() - t0 < 30
    err = capsys.readouterr().err
    assert "the Ray cluster has 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()


def test_two_worker_trials_under_tune_with_asha(data, tmp_path):
    import yaml

    from mlem_ray.sweep.pipeline import SweepJob, run_sweep

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "method": "coles",
        "sweep": {"trials": 3, "max_concurrent": 1, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2,
                  "epochs": 3, "seed": 1, "finalists": 1},
        "params": {"optim.lr": {"type": "log_float", "low": 1e-4, "high": 3e-2}, **SMALL},
    }))
    out = tmp_path / "sweep"
    run_sweep(SweepJob(out=str(out), data=str(data), space=str(space), workers_per_trial=2, **FAST_PROBE))
    board = read_leaderboard(out)
    assert len(board) == 3 and board["trial_id"].is_unique  # every trial started, finished and was scored
    iterations = {p.name: len((p / "result.json").read_text().splitlines())
                  for p in (out / "coles").iterdir() if (p / "result.json").exists()}
    assert len(iterations) == 3
    assert min(iterations.values()) < 3 <= max(iterations.values())  # ASHA stopped one, others ran on
    for ckpt in board["checkpoint"]:
        assert Path(ckpt, "model.pt").exists()
