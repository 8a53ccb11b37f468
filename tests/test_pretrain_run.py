"""A pretraining run's lifecycle (training/run.py): where the loop runs (inline on this machine's
CPU or GPU for one worker, Ray Train for more), and --resume continuing the run saved in --out
from its own config.yaml, refusing flags that contradict it."""
import json

import pytest
import torch
import yaml
from helpers import make_pendulum

from mlem_ray.cli import main
from mlem_ray.config import make_config
from mlem_ray.training import run as lifecycle
from mlem_ray.training.run import PretrainJob, run_pretrain, runs_inline

SMALL = {"model.hidden": 8, "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20,
         "train.steps_per_epoch": 2, "optim.lr": 0.002}
SETS = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pendulum(tmp_path_factory.mktemp("run") / "d", 100, seed=2)


def test_one_worker_runs_inline_on_cpu_or_on_a_gpu_here_and_more_go_through_ray_train():
    assert runs_inline(1, 0.0, gpu_here=False) and runs_inline(1, 0.0, gpu_here=True)
    assert runs_inline(1, 1.0, gpu_here=True) and runs_inline(1, 0.5, gpu_here=True)
    assert not runs_inline(1, 1.0, gpu_here=False)  # Ray places it on a node with a GPU
    assert not runs_inline(2, 0.0, gpu_here=True) and not runs_inline(4, 1.0, gpu_here=True)


@pytest.mark.parametrize("gpu_here", [True, False])
def test_a_one_worker_gpu_pretrain_trains_inline_on_the_gpu_when_there_is_one(data, tmp_path, monkeypatch, gpu_here):
    chosen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_here)
    monkeypatch.setattr(lifecycle, "_run_inline", lambda cfg, target, resume, inputs, device, say:
                        chosen.update(path="inline", device=device.type) or lifecycle.PretrainResult(target, 1, 0.0))
    monkeypatch.setattr(lifecycle, "_run_distributed", lambda job, cfg, target, resume, say:
                        chosen.update(path="ray_train") or lifecycle.PretrainResult(target, 1, 0.0))
    job = PretrainJob(method="coles", data=str(data), out=str(tmp_path / "r"), overrides=dict(SMALL),
                      gpus_per_worker=1.0)
    run_pretrain(job, say=lambda line: None)
    assert chosen == ({"path": "inline", "device": "cuda"} if gpu_here else {"path": "ray_train"})


def _epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_the_saved_run_without_repeating_its_flags(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--method", "generative", "--out", str(run), "--epochs", "1",
                 *SETS, "--set", "model.decoder_width=16", "--set", "model.decoder_layers=1"]) == 0
    # no --method, no --set: the saved generative run with hidden 8 goes on (today's defaults would
    # build a coles model of width 256 and fail to load the weights)
    assert main(["pretrain", "--data", str(data), "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert _epochs(run) == [0, 1]
    saved = yaml.safe_load((run / "last" / "config.yaml").read_text())
    assert saved["objective"]["method"] == "generative" and saved["model"]["hidden"] == 8
    assert saved["train"]["epochs"] == 2 and saved["optim"]["lr"] == 0.002
    # flags repeating the saved values are fine, whatever their spelling (2e-3 is 0.002)
    capsys.readouterr()
    assert main(["pretrain", "--data", str(data), "--method", "generative", "--out", str(run), "--resume",
                 "--epochs", "2", "--set", "optim.lr=2.0e-3", "--set", "model.hidden=8"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_resume_refuses_flags_that_contradict_the_saved_run_naming_them(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--method", "coles", "--out", str(run), "--epochs", "1", *SETS]) == 0
    before = (run / "last" / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["pretrain", "--data", str(data), "--method", "mlem", "--out", str(run), "--resume",
                 "--set", "model.hidden=16"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "objective.method='mlem' (saved: 'coles')" in err and "model.hidden=16 (saved: 8)" in err
    assert (run / "last" / "model.pt").read_bytes() == before and _epochs(run) == [0]
    # a key from --config that differs is refused too
    override = tmp_path / "c.yaml"
    override.write_text("optim: {lr: 0.01}\n")
    assert main(["pretrain", "--data", str(data), "--out", str(run), "--resume", "--config", str(override)]) == 2
    assert "optim.lr=0.01 (saved: 0.002)" in capsys.readouterr().err
    # without --resume, --method stays required
    assert main(["pretrain", "--data", str(data), "--out", str(tmp_path / "new")]) == 2
    assert "--method is required" in capsys.readouterr().err


def test_the_resumed_config_takes_only_the_keys_a_resume_may_change(data, tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--method", "coles", "--out", str(run), "--epochs", "1", *SETS]) == 0
    job = PretrainJob(method="", data=str(data), out=str(run), resume=True,
                      overrides={"train.epochs": 3, "train.threads": 1})
    cfg = lifecycle.resumed_config(job, str(run))
    assert cfg.train.epochs == 3 and cfg.train.threads == 1
    assert cfg.model.hidden == 8 and cfg == make_config("coles", {**SMALL, "data.path": str(data),
                                                                  "train.epochs": 3, "train.threads": 1})
