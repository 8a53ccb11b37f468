"""An interrupted streaming ingest leaves an existing data set in --out as it was: SIGTERM (and
Ctrl-C) unwind and remove the spill files and the half-written data set at once; after a
SIGKILL, the next ingest next to --out removes the dead run's spill directory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ev")
    rng = np.random.default_rng(0)
    n = 1_200_000
    pq.write_table(pa.table({"client": rng.integers(0, 20_000, n), "t": rng.random(n), "mcc": rng.integers(0, 50, n),
                             "amount": rng.normal(size=n)}), tmp / "e.parquet")
    return tmp / "e.parquet"


def ingest_cmd(events, out, *extra):
    return [sys.executable, "-m", "mlem_ray", "data", "ingest", "--events", str(events), "--out", str(out),
            "--id-col", "client", "--time-col", "t", "--cat-cols", "mcc", "--num-cols", "amount", "--streaming", "on",
            "--progress", *extra]


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def leftovers(d: Path) -> list:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_ingest_leaves_the_existing_data_set_and_no_temporaries(events, tmp_path, sig):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    done = subprocess.run(ingest_cmd(events, out, "--max-len", "5"), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before = snapshot(out)
    proc = subprocess.Popen(ingest_cmd(events, out, "--overwrite", "--memory-gb", "0.02"), env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if line.startswith("pass 3b: shard 1/"):  # spill files and the new data set's temp dir both exist
            proc.send_signal(sig)
            break
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_after_a_kill_the_next_ingest_removes_the_dead_runs_spill(events, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    proc = subprocess.Popen(ingest_cmd(events, out, "--memory-gb", "0.02"), env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if line.startswith("pass 2:"):  # the spill directory exists
            proc.kill()
            break
    proc.wait(timeout=60)
    assert any(n.startswith(".mlem-ingest-spill-") for n in leftovers(tmp_path))
    assert not out.exists()
    done = subprocess.run(ingest_cmd(events, out), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not any(n.startswith(".mlem-ingest-spill-") for n in leftovers(tmp_path))
