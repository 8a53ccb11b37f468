"""Bad input, as a new user would try it, across every command: each case ends with exit code 2,
one line on stderr naming the problem, no traceback, nothing written, and whatever was in the
working directories before (a data set, a run, a sweep, an embedding file) left exactly as it was.

The CLI runs in-process (`main(argv)`); cases that need Ray share one in-process instance, started
after the cases that must find none (an unreachable --address)."""
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import file_snapshot, make_pendulum
from mlem_ray.cli import main
from mlem_ray.config import make_config
from mlem_ray.training import LocalReporter, train

SMALL = {"model.hidden": 16, "model.decoder_width": 16, "model.decoder_layers": 1, "model.decoder_ff": 32,
         "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20, "train.epochs": 1,
         "train.steps_per_epoch": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Everything the cases point at: data sets, checkpoints, an existing run, sweep and embedding."""
    w = tmp_path_factory.mktemp("world")
    make_pendulum(w / "lab", 240, seed=3)
    rng = np.random.default_rng(0)
    rows = [(f"c{i}", float(t), str(rng.choice(["a", "b"])), float(rng.normal())) for i in range(60) for t in range(8)]
    pd.DataFrame(rows, columns=["id", "time", "kind", "amount"]).to_csv(w / "events.csv", index=False)
    assert main(["data", "ingest", "--events", str(w / "events.csv"), "--id-col", "id", "--time-col", "time",
                 "--cat-cols", "kind", "--num-cols", "amount", "--out", str(w / "nolab")]) == 0
    (w / "targets.csv").write_text("id,y\nc0,1\nc1,2\nc2,3\nc3,1\n")
    pd.DataFrame({"id": [f"c{i}" for i in range(60)], "y": rng.normal(size=60)}).to_csv(w / "all_targets.csv",
                                                                                       index=False)
    assert main(["data", "ingest", "--events", str(w / "events.csv"), "--id-col", "id", "--time-col", "time",
                 "--cat-cols", "kind", "--num-cols", "amount", "--targets", str(w / "all_targets.csv"),
                 "--out", str(w / "lab2")]) == 0
    train(make_config("coles", {**SMALL, "data.path": str(w / "lab")}), LocalReporter(w / "run", stream=None))
    train(make_config("generative", {**SMALL, "data.path": str(w / "lab")}), LocalReporter(w / "gen", stream=None))
    assert main(["embed", "--data", str(w / "lab"), "--checkpoint", str(w / "run" / "best"),
                 "--out", str(w / "emb.parquet")]) == 0
    (w / "notckpt").mkdir()
    (w / "notckpt" / "readme.txt").write_text("not a checkpoint")
    shutil.copytree(w / "run" / "best", w / "corrupt")
    (w / "corrupt" / "model.pt").write_bytes(b"\x00garbage" * 10)
    (w / "empty").mkdir()
    (w / "bad.yaml").write_text("stages: [unclosed\n")
    (w / "unknown_key.yaml").write_text("optim:\n  lrr: 1.0\n")
    (w / "space_unknown.yaml").write_text("method: coles\nparams:\n  optim.lrr: 1.0\n")
    (w / "events.txt").write_text("id time\n")
    (w / "sweep").mkdir()
    (w / "sweep" / "sweep.json").write_text('{"out": "x"}')
    (w / "badboard").mkdir()
    pd.DataFrame({"foo": [1.0]}).to_parquet(w / "badboard" / "leaderboard.parquet")
    (w / "garbageboard").mkdir()
    (w / "garbageboard" / "leaderboard.parquet").write_bytes(b"not parquet")
    return w


def ingest(events="{w}/events.csv", *extra, out="{t}/out"):
    return ["data", "ingest", "--events", events, "--id-col", "id", "--time-col", "time", "--cat-cols", "kind",
            "--num-cols", "amount", "--out", out, *extra]


def pretrain(*extra, data="{w}/lab", method="coles", out="{t}/run"):
    return ["pretrain", "--data", data, "--method", method, "--out", out, "--epochs", "1", *extra]


def sweep(*extra, out="{t}/sweep"):
    return ["sweep", "--out", out, *extra]


# (id, argv with {w} = the world, {t} = this case's own empty dir, what stderr must name)
CASES = [
    # data
    ("ingest-missing-events", ingest("{w}/nope.csv"), "does not exist"),
    ("ingest-wrong-format", ingest("{w}/events.txt"), "events.txt"),
    ("ingest-no-id-column", ingest() + ["--id-col", "client"], "client"),
    ("ingest-no-time-column", ingest() + ["--time-col", "when"], "when"),
    ("ingest-no-cat-column", ingest() + ["--cat-cols", "mcc"], "mcc"),
    ("ingest-text-as-numeric", ingest() + ["--num-cols", "kind"], "kind"),
    ("ingest-text-as-time", ingest() + ["--time-col", "kind"], "kind"),
    ("ingest-missing-targets", ingest("{w}/events.csv", "--targets", "{w}/nope.csv"), "nope.csv"),
    ("ingest-no-target-column", ingest("{w}/events.csv", "--targets", "{w}/targets.csv", "--target-col", "z"), "z"),
    ("ingest-binary-with-3-classes", ingest("{w}/events.csv", "--targets", "{w}/targets.csv", "--task", "binary"),
     "binary"),
    ("ingest-test-fraction-above-1", ingest("{w}/events.csv", "--test-fraction", "1.5"), "test"),
    ("ingest-min-len-above-max-len", ingest("{w}/events.csv", "--min-len", "20", "--max-len", "10"), "min"),
    ("ingest-over-another-dataset", ingest("{w}/events.csv", "--max-len", "3", out="{w}/nolab"), "--overwrite"),
    ("pendulum-zero-sequences", ["data", "pendulum", "--out", "{t}/p", "--sequences", "0"], "--sequences"),
    # pretrain
    ("pretrain-missing-data", pretrain(data="{w}/nope"), "nope"),
    ("pretrain-data-not-prepared", pretrain(data="{w}/empty"), "schema.json"),
    ("pretrain-missing-config", pretrain("--config", "{w}/nope.yaml"), "does not exist"),
    ("pretrain-config-not-yaml", pretrain("--config", "{w}/bad.yaml"), "not valid YAML"),
    ("pretrain-config-unknown-key", pretrain("--config", "{w}/unknown_key.yaml"), "lrr"),
    ("pretrain-set-unknown-key", pretrain("--set", "optim.lrr=1"), "optim.lrr"),
    ("pretrain-set-wrong-type", pretrain("--set", "optim.lr=fast"), "optim.lr"),
    ("pretrain-set-no-equals", pretrain("--set", "optim.lr"), "optim.lr"),
    ("pretrain-set-zero-batch", pretrain("--set", "data.batch_size=0"), "batch_size"),
    ("pretrain-set-dropout-above-1", pretrain("--set", "model.dropout=1.5"), "dropout"),
    ("pretrain-zero-epochs", pretrain("--epochs", "0"), "epochs"),
    ("pretrain-cuda-without-gpu", pretrain("--set", "train.device=cuda"), "no GPU"),
    ("pretrain-supervised-without-targets", pretrain(data="{w}/nolab", method="supervised"), "targets"),
    ("pretrain-mlem-without-teacher", pretrain(method="mlem"), "--teacher"),
    ("pretrain-mlem-missing-teacher", pretrain("--teacher", "{w}/nope", method="mlem"), "nope"),
    ("pretrain-mlem-teacher-not-checkpoint", pretrain("--teacher", "{w}/notckpt", method="mlem"), "not a checkpoint"),
    ("pretrain-mlem-teacher-other-schema", pretrain("--teacher", "{w}/run/best", data="{w}/nolab", method="mlem"),
     "schema"),
    ("pretrain-mlem-teacher-not-coles", pretrain("--teacher", "{w}/gen/best", method="mlem"), "not coles"),
    ("pretrain-resume-nothing", pretrain("--resume"), "no run to continue"),
    ("pretrain-over-existing-run", pretrain(out="{w}/run"), "--overwrite"),
    ("pretrain-zero-workers", pretrain("--workers", "0"), "--workers"),
    ("pretrain-unreachable-cluster", pretrain("--workers", "2", "--address", "127.0.0.1:1"), "127.0.0.1:1"),
    ("pretrain-malformed-address", pretrain("--workers", "2", "--address", "headnode"), "HOST:PORT"),
    # evaluate
    ("evaluate-missing-checkpoint", ["evaluate", "--data", "{w}/lab", "--checkpoint", "{w}/nope"], "nope"),
    ("evaluate-corrupt-checkpoint", ["evaluate", "--data", "{w}/lab", "--checkpoint", "{w}/corrupt"], "cannot load"),
    ("evaluate-data-without-targets", ["evaluate", "--data", "{w}/nolab", "--checkpoint", "{w}/run/best"], "targets"),
    ("evaluate-checkpoint-other-schema", ["evaluate", "--data", "{w}/lab2", "--checkpoint", "{w}/run/best"],
     "schema"),
    ("evaluate-one-fold", ["evaluate", "--data", "{w}/lab", "--checkpoint", "{w}/run/best", "--folds", "1"], "--folds"),
    ("evaluate-missing-data", ["evaluate", "--data", "{w}/nope", "--checkpoint", "{w}/run/best"], "nope"),
    # embed
    ("embed-out-not-parquet", ["embed", "--data", "{w}/lab", "--checkpoint", "{w}/run/best", "--out", "{t}/e.csv"],
     ".parquet"),
    ("embed-checkpoint-other-schema", ["embed", "--data", "{w}/nolab", "--checkpoint", "{w}/run/best",
                                       "--out", "{w}/emb.parquet"], "schema"),
    ("embed-checkpoint-not-checkpoint", ["embed", "--data", "{w}/lab", "--checkpoint", "{w}/notckpt",
                                         "--out", "{w}/emb.parquet"], "not a checkpoint"),
    ("embed-data-not-prepared", ["embed", "--data", "{w}/empty", "--checkpoint", "{w}/run/best",
                                 "--out", "{t}/e.parquet"], "schema.json"),
    # sweep
    ("sweep-zero-trials", sweep("--trials", "0"), "--trials"),
    ("sweep-missing-space", sweep("--space", "{w}/nope.yaml"), "nope.yaml"),
    ("sweep-space-not-yaml", sweep("--space", "{w}/bad.yaml"), "bad.yaml"),
    ("sweep-space-unknown-key", sweep("--space", "{w}/space_unknown.yaml"), "lrr"),
    ("sweep-data-not-prepared", sweep("--data", "{w}/empty"), "schema.json"),
    ("sweep-resume-nothing", sweep("--resume"), "no sweep"),
    ("sweep-over-existing-sweep", sweep(out="{w}/sweep"), "--resume"),
    ("sweep-unknown-method", sweep("--data", "{w}/lab", "--methods", "magic"), "magic"),
    ("sweep-zero-workers", sweep("--workers-per-trial", "0"), "--workers-per-trial"),
    ("sweep-probe-metric-without-labels", sweep("--data", "{w}/nolab"), "rankme"),
    ("sweep-unreachable-cluster", sweep("--data", "{w}/lab", "--address", "ray://127.0.0.1:1"), "127.0.0.1:1"),
    # report
    ("report-missing-dir", ["report", "{w}/nope"], "nope"),
    ("report-no-leaderboard", ["report", "{w}/empty"], "leaderboard"),
    ("report-leaderboard-wrong-columns", ["report", "{w}/badboard"], "trial_id"),
    ("report-leaderboard-not-parquet", ["report", "{w}/garbageboard"], "leaderboard"),
    ("report-reseed-no-sweep", ["report", "{w}/badboard", "--reseed"], "no sweep"),
]

# Resources that are not there: these need a Ray instance to ask.
RAY_CASES = [
    ("pretrain-gpus-not-there", pretrain("--gpus-per-worker", "1"), "GPUs"),
    ("sweep-gpus-not-there", sweep("--data", "{w}/lab", "--gpus-per-worker", "1"), "GPUs"),
]


def check_case(world, tmp_path, capsys, argv, message):
    own = tmp_path / "case"
    own.mkdir()
    argv = [a.format(w=world, t=own) for a in argv]
    before = file_snapshot(world, own)
    cwd = os.getcwd()
    os.chdir(own)  # anything written relative to the working directory lands where it is seen
    try:
        code = main(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"mlem-ray {argv[0]}: error:")]
    assert code == 2, f"{argv}: exit {code}; stderr: {err[-2000:]}"
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert message in errors[0], errors[0]
    assert file_snapshot(world, own) == before, "the command wrote or changed files"


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(world, tmp_path, capsys, argv, message):
    import ray

    assert not ray.is_initialized()  # the unreachable-cluster cases must really try to connect
    check_case(world, tmp_path, capsys, argv, message)


@pytest.fixture(scope="module")
def ray_options():
    return {"num_cpus": 1}


@pytest.mark.parametrize("argv,message", [c[1:] for c in RAY_CASES], ids=[c[0] for c in RAY_CASES])
def test_bad_input_needing_ray(world, ray_session, tmp_path, capsys, argv, message):
    check_case(world, tmp_path, capsys, argv, message)


def test_the_table_is_big_and_distinct():
    ids = [c[0] for c in CASES + RAY_CASES]
    assert len(set(ids)) == len(ids) >= 40
    assert len({tuple(c[1]) for c in CASES + RAY_CASES}) == len(ids)
