"""Where commands write (mlem_ray/outputs.py): an --out that is an input, holds one or lies inside
one, that is under a regular file or on a read-only file system, is refused before any work with
exit 2 and one line, the inputs intact; a write that fails midway on a full disk ends in one line
with nothing partial left; temporaries of a killed run are removed by the next run into the same
place, a live process's are kept.

Self-contained (its own tiny data set and checkpoint). The full-disk and read-only cases mount a
small tmpfs, which needs root with CAP_SYS_ADMIN; elsewhere they are skipped with that reason."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import file_snapshot
from mlem_ray.cli import main
from mlem_ray.config import make_config
from mlem_ray.outputs import remove_stale, temp_name
from mlem_ray.training import LocalReporter, train

SMALL = {"model.hidden": 16, "data.batch_size": 16, "data.slice_min": 3, "data.slice_max": 8, "train.epochs": 1,
         "train.steps_per_epoch": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    rows = [(f"c{i}", float(t), str(rng.choice(["a", "b"])), float(rng.normal())) for i in range(60) for t in range(8)]
    pd.DataFrame(rows, columns=["id", "time", "kind", "amount"]).to_csv(w / "events.csv", index=False)
    pd.DataFrame({"id": [f"c{i}" for i in range(60)], "y": rng.integers(0, 2, 60)}).to_csv(w / "targets.csv",
                                                                                        index=False)
    assert main(ingest_argv(w, w / "data")) == 0
    train(make_config("coles", {**SMALL, "data.path": str(w / "data")}), LocalReporter(w / "run", stream=None))
    (w / "afile").write_text("a regular file\n")
    return w


def ingest_argv(w: Path, out: Path, *extra) -> list:
    return ["data", "ingest", "--events", str(w / "events.csv"), "--id-col", "id", "--time-col", "time",
            "--cat-cols", "kind", "--num-cols", "amount", "--targets", str(w / "targets.csv"), "--task", "binary",
            "--out", str(out), *extra]


def pretrain_argv(w: Path, out, *extra) -> list:
    return ["pretrain", "--data", str(w / "data"), "--method", "coles", "--out", str(out), "--epochs", "1",
            *[a for k, v in SMALL.items() if k != "train.epochs" for a in ("--set", f"{k}={v}")], *extra]


def embed_argv(w: Path, out) -> list:
    return ["embed", "--data", str(w / "data"), "--checkpoint", str(w / "run" / "best"), "--out", str(out)]


def refused(argv, capsys, *roots: Path, names: str = "") -> str:
    before = file_snapshot(*roots)
    code = main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2, (code, err[-20:])
    assert len(err) == 1 and err[0].startswith(f"mlem-ray {argv[0]}: error:"), err[-20:]
    assert names in err[0], err[0]
    assert file_snapshot(*roots) == before, "the refused command changed files"
    return err[0]


# -- an --out that is, holds or lies inside an input


def test_pretrain_onto_its_own_data_set_with_overwrite_is_refused_and_the_data_set_kept(world, capsys):
    line = refused(["pretrain", "--data", world / "data", "--method", "coles", "--out", world / "data",
                    "--overwrite"], capsys, world, names=str(world / "data"))
    assert "is the input" in line
    assert main(embed_argv(world, world / "check.parquet")) == 0  # the data set still opens and embeds
    (world / "check.parquet").unlink()


@pytest.mark.parametrize("case", ["inside-the-data", "holds-the-data", "holds-the-teacher", "inside-the-teacher"])
def test_pretrain_out_overlapping_an_input_is_refused(world, tmp_path, capsys, case):
    argv = {
        "inside-the-data": pretrain_argv(world, world / "data" / "run"),
        "holds-the-data": pretrain_argv(world, world, "--overwrite"),
        "holds-the-teacher": pretrain_argv(world, world / "run", "--overwrite", "--teacher", world / "run" / "best"),
        "inside-the-teacher": pretrain_argv(world, world / "run" / "best" / "r", "--teacher", world / "run" / "best"),
    }[case]
    if "teacher" in case:
        argv[argv.index("coles")] = "mlem"
    refused(argv, capsys, world, names="input")


@pytest.mark.parametrize("case", ["into-the-data-set", "into-the-checkpoint"])
def test_embed_into_an_input_is_refused(world, capsys, case):
    out = world / ("data" if case == "into-the-data-set" else "run/best") / "e.parquet"
    refused(embed_argv(world, out), capsys, world, names="lies inside the input")


def test_ingest_over_a_directory_holding_its_events_is_refused(world, tmp_path, capsys):
    import shutil

    shutil.copy(world / "events.csv", tmp_path / "events.csv")
    shutil.copy(world / "targets.csv", tmp_path / "targets.csv")
    refused(ingest_argv(tmp_path, tmp_path, "--overwrite"), capsys, tmp_path, names="holds the input")
    refused(ingest_argv(tmp_path, tmp_path / "events.csv", "--overwrite"), capsys, tmp_path, names="is a file")


# -- an --out that cannot be written


@pytest.mark.parametrize("command", ["data", "pretrain", "embed", "sweep"])
def test_out_under_a_regular_file_is_refused_before_work(world, capsys, command):
    under = world / "afile" / "x"
    argv = {"data": ingest_argv(world, under), "pretrain": pretrain_argv(world, under),
            "embed": embed_argv(world, under / "e.parquet"),
            "sweep": ["sweep", "--data", world / "data", "--out", under]}[command]
    refused(argv, capsys, world, names="is a file, not a directory")


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size under tmp_path; unmounted afterwards."""
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                           text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {r.stderr.strip()[:200]}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount_read_only(where: Path) -> None:
    r = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot remount the tmpfs read-only: {r.stderr.strip()[:200]}")


@pytest.mark.parametrize("command", ["data", "pretrain", "embed", "report"])
def test_out_on_a_read_only_file_system_is_refused_before_work(world, tmpfs, capsys, command):
    # chmod would not do: root ignores permissions; a read-only mount it cannot ignore
    ro = tmpfs("1m")
    (ro / "sweep").mkdir()
    remount_read_only(ro)
    argv = {"data": ingest_argv(world, ro / "d"), "pretrain": pretrain_argv(world, ro / "run"),
            "embed": embed_argv(world, ro / "e.parquet"), "report": ["report", ro / "sweep"]}[command]
    refused(argv, capsys, world, ro, names="read-only file system")


def fill(where: Path, leave: int) -> None:
    """Fill the tmpfs at `where` up to `leave` bytes free."""
    free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
    (where / "filler").write_bytes(b"\0" * max(0, free - leave))


def leftovers(root: Path) -> list:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith((".new", ".old")) or ".old-" in p.name]


@pytest.mark.parametrize("command", ["data", "embed", "pretrain"])
def test_a_full_disk_midway_ends_in_one_line_with_nothing_partial_left(world, tmpfs, capsys, command):
    full = tmpfs("2m")
    fill(full, leave=4096)  # room to start (a directory, a page of a file), not to finish
    before = sorted(p.name for p in full.iterdir())
    argv = {"data": ingest_argv(world, full / "d"), "embed": embed_argv(world, full / "e.parquet"),
            "pretrain": pretrain_argv(world, full / "run")}[command]
    code = main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0], (code, err[-20:])
    assert leftovers(full) == []
    if command != "pretrain":  # nothing at all appears; a run directory may keep its log of the epoch
        assert sorted(p.name for p in full.iterdir()) == before
    else:
        assert not (full / "run" / "best").exists() and not (full / "run" / "last").exists()


# -- temporaries of killed runs


def test_stale_temporaries_are_removed_and_a_live_writers_kept(tmp_path):
    out = tmp_path / "d"
    dead = 2 ** 22 + 12345  # above pid_max's default: no such process
    stale_dir = tmp_path / (temp_name("d").replace(f"-{os.getpid()}.", f"-{dead}.") + "abc")
    stale_file = tmp_path / f".d.tmp-{dead}"  # the older name of a file write (no host)
    live = tmp_path / (temp_name("d") + "xyz")  # this process: alive
    other = tmp_path / (temp_name("other").replace(f"-{os.getpid()}.", f"-{dead}.") + "q")  # not d's
    for p in (stale_dir, live, other):
        p.mkdir()
    (stale_dir / "sequences.arrow").write_bytes(b"partial")
    stale_file.write_bytes(b"partial")
    assert sorted(remove_stale(out)) == sorted([stale_dir, stale_file])
    assert live.exists() and other.exists()


def test_a_killed_ingest_leaves_a_temporary_that_the_next_ingest_removes(world, tmp_path):
    out = tmp_path / "p"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "mlem_ray", "data", "pendulum", "--sequences", "30000",
                             "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".p.tmp-") for p in tmp_path.iterdir()):
        assert proc.poll() is None, "the ingest ended before it was killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".p.tmp-")]
    assert stale and not out.exists()
    assert main(["data", "pendulum", "--sequences", "50", "--out", str(out)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["p"]
    assert json.loads((out / "schema.json").read_text())["counts"]["sequences_kept"] == 50
