"""Damaged prepared data sets and checkpoints, as a disk, a copy or a newer writer leaves them:
every command that reads one refuses it with exit code 2 and one line naming the damaged file,
no traceback, and nothing on disk changed. An extra key in schema.json (a newer writer's
addition) is ignored on purpose: the commands run.

Self-contained: the data set and checkpoint are made here, the CLI runs in-process."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import file_snapshot
from mlem_ray.cli import main
from mlem_ray.config import make_config
from mlem_ray.training import LocalReporter, train

SMALL = {"model.hidden": 16, "data.batch_size": 16, "data.slice_min": 3, "data.slice_max": 8, "train.epochs": 1,
         "train.steps_per_epoch": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A labelled data set with a categorical field (`data`), a CoLES checkpoint of it (`run/best`)
    and a second, smaller data set of the same fields (`other`)."""
    w = tmp_path_factory.mktemp("damaged")
    rng = np.random.default_rng(0)
    rows = [(f"c{i}", float(t), str(rng.choice(["a", "b", "c"])), float(rng.normal()))
            for i in range(80) for t in range(10)]
    pd.DataFrame(rows, columns=["id", "time", "kind", "amount"]).to_csv(w / "events.csv", index=False)
    pd.DataFrame({"id": [f"c{i}" for i in range(80)], "y": rng.integers(0, 2, 80)}).to_csv(w / "targets.csv",
                                                                                        index=False)
    ingest = ["data", "ingest", "--events", str(w / "events.csv"), "--id-col", "id", "--time-col", "time",
              "--cat-cols", "kind", "--num-cols", "amount", "--targets", str(w / "targets.csv"),
              "--task", "binary"]
    assert main([*ingest, "--out", str(w / "data")]) == 0
    assert main([*ingest, "--out", str(w / "other"), "--max-len", "5", "--seed", "1", "--test-fraction", "0.3"]) == 0
    train(make_config("coles", {**SMALL, "data.path": str(w / "data")}), LocalReporter(w / "run", stream=None))
    return w


# -- damage: each makes a broken copy of the data set (d) or the checkpoint (c) and returns the file named


def truncate(file: Path, keep: float = 0.5) -> Path:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])
    return file


def put(file: Path, data: bytes) -> Path:
    file.write_bytes(data)
    return file


def remove(file: Path) -> Path:
    file.unlink()
    return file


def edit_schema(d: Path, change) -> Path:
    s = json.loads((d / "schema.json").read_text())
    s = change(s)
    (d / "schema.json").write_text(json.dumps(s))
    return d / "schema.json"


def drop_key(key):
    def change(s):
        del s[key]
        return s
    return change


def fewer_codes(s):  # the stored codes go past the vocabulary schema.json now has
    s["categorical"][0]["vocabulary"] = s["categorical"][0]["vocabulary"][:1]
    return s


def fewer_codes_unlisted(s):
    # a data set written before shards were listed: the codes themselves are checked
    s = fewer_codes(s)
    s["shards"] = []
    return s


DATA_FAULTS = {
    "arrow-truncated": lambda d, w: truncate(d / "sequences.arrow"),
    "arrow-missing": lambda d, w: remove(d / "sequences.arrow"),
    "arrow-from-another-data-set": lambda d, w: Path(shutil.copy(w / "other" / "sequences.arrow", d)),
    "arrow-garbage": lambda d, w: put(d / "sequences.arrow", b"ARROW1" + os.urandom(200)),
    "schema-truncated": lambda d, w: truncate(d / "schema.json"),
    "schema-empty": lambda d, w: put(d / "schema.json", b""),
    "schema-a-list": lambda d, w: edit_schema(d, lambda s: [s]),
    "schema-missing-time-unit": lambda d, w: edit_schema(d, drop_key("time_unit")),
    "schema-missing-categorical": lambda d, w: edit_schema(d, drop_key("categorical")),
    "schema-categorical-not-a-list": lambda d, w: edit_schema(d, lambda s: {**s, "categorical": 3}),
    "schema-max-len-text": lambda d, w: edit_schema(d, lambda s: {**s, "max_len": "ten"}),
    "schema-task-unknown": lambda d, w: edit_schema(d, lambda s: {**s, "task": "ranking"}),
    "schema-shards-not-entries": lambda d, w: edit_schema(d, lambda s: {**s, "shards": ["sequences"]}),
    "schema-code-max-not-a-mapping": lambda d, w: edit_schema(
        d, lambda s: {**s, "shards": [{**s["shards"][0], "code_max": 7}]}),
    "schema-center-not-a-number": lambda d, w: edit_schema(
        d, lambda s: {**s, "numeric": [{**s["numeric"][0], "center": "abc"}]}),
    "schema-vocabulary-smaller-than-codes": lambda d, w: edit_schema(d, fewer_codes),
    "schema-vocabulary-smaller-than-codes-unlisted": lambda d, w: edit_schema(d, fewer_codes_unlisted),
    "targets-truncated": lambda d, w: truncate(d / "targets.parquet"),
    "targets-garbage": lambda d, w: put(d / "targets.parquet", b"PAR1" + b"\x00" * 64),
}


def save_state(c: Path, change) -> Path:
    state = torch.load(c / "model.pt", weights_only=True)
    torch.save(change(state), c / "model.pt")
    return c / "model.pt"


def without(key):
    def change(state):
        del state[key]
        return state
    return change


def edit_config(c: Path, change) -> Path:
    cfg = yaml.safe_load((c / "config.yaml").read_text())
    (c / "config.yaml").write_text(yaml.safe_dump(change(cfg)))
    return c / "config.yaml"


def wider_model(c: Path) -> Path:
    """config.yaml says hidden 32, model.pt holds hidden-16 tensors: model.pt is refused."""
    edit_config(c, lambda cfg: {**cfg, "model": {**cfg["model"], "hidden": 32}})
    return c / "model.pt"


def extra_tensor(state):
    state["encoder"]["body.extra.weight"] = torch.zeros(2)
    return state


def fewer_tensors(state):
    state["encoder"].pop(sorted(state["encoder"])[0])
    return state


CHECKPOINT_FAULTS = {
    "model-truncated": lambda c: truncate(c / "model.pt"),
    "model-empty": lambda c: put(c / "model.pt", b""),
    "model-no-encoder": lambda c: save_state(c, without("encoder")),
    "model-no-trainer": lambda c: save_state(c, without("trainer")),
    "model-encoder-not-tensors": lambda c: save_state(c, lambda s: {**s, "encoder": [1, 2]}),
    "model-a-list": lambda c: save_state(c, lambda s: [s["encoder"]]),
    "model-extra-tensor": lambda c: save_state(c, extra_tensor),
    "model-missing-tensor": lambda c: save_state(c, fewer_tensors),
    "model-does-not-fit-config": wider_model,
    "config-not-a-mapping": lambda c: put(c / "config.yaml", b"- coles\n- 16\n"),
    "config-truncated": lambda c: put(c / "config.yaml", b"model: {hidden: 16, layers"),
    "config-missing": lambda c: remove(c / "config.yaml"),
    "schema-missing": lambda c: remove(c / "schema.json"),
    "metrics-not-json": lambda c: put(c / "metrics.json", b"{"),
}


def refused(argv, root: Path, capsys, names: str) -> None:
    before = file_snapshot(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code = main([str(a) for a in argv])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"{argv}: exit {code}; stderr: {err[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith(f"mlem-ray {argv[0]}: error:"), err[-3000:]
    assert names in lines[0], lines[0]
    assert file_snapshot(root) == before, "the command wrote or changed files"


def commands(data: Path, ckpt: Path, case: Path):
    return {
        "pretrain": ["pretrain", "--data", data, "--method", "coles", "--out", case / "run", "--epochs", "1"],
        "evaluate": ["evaluate", "--data", data, "--checkpoint", ckpt, "--folds", "2"],
        "embed": ["embed", "--data", data, "--checkpoint", ckpt, "--out", case / "e.parquet"],
    }


@pytest.mark.parametrize("command", ["pretrain", "evaluate", "embed"])
@pytest.mark.parametrize("fault", sorted(DATA_FAULTS))
def test_a_damaged_data_set_is_refused_naming_the_file(world, tmp_path, capsys, fault, command):
    if fault.startswith("targets") and command != "evaluate":
        pytest.skip("only evaluate reads the targets of a self-supervised run's data")
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    file = DATA_FAULTS[fault](data, world)
    refused(commands(data, world / "run" / "best", tmp_path)[command], tmp_path, capsys, str(file))


@pytest.mark.parametrize("command", ["evaluate", "embed", "teacher", "resume"])
@pytest.mark.parametrize("fault", sorted(CHECKPOINT_FAULTS))
def test_a_damaged_checkpoint_is_refused_naming_the_file(world, tmp_path, capsys, fault, command):
    run = tmp_path / "old_run"
    ckpt = run / "last"
    shutil.copytree(world / "run" / "best", ckpt)
    file = CHECKPOINT_FAULTS[fault](ckpt)
    if command == "teacher":
        argv = ["pretrain", "--data", world / "data", "--method", "mlem", "--teacher", ckpt, "--out",
                tmp_path / "run", "--epochs", "1"]
    elif command == "resume":
        # A resume continues the run from its own config.yaml: no --set flags to repeat.
        argv = ["pretrain", "--data", world / "data", "--method", "coles", "--out", run, "--resume", "--epochs", "2"]
    else:
        argv = commands(world / "data", ckpt, tmp_path)[command]
    refused(argv, tmp_path, capsys, str(file))


def test_an_unknown_schema_key_from_a_newer_writer_is_ignored(world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    edit_schema(data, lambda s: {**s, "written_by": "mlem_ray 9.0", "shards": [{**s["shards"][0], "bytes": 1}]})
    assert main(["embed", "--data", str(data), "--checkpoint", str(world / "run" / "best"),
                 "--out", str(tmp_path / "e.parquet")]) == 0
    assert (tmp_path / "e.parquet").exists()
