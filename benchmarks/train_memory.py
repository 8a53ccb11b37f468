"""A pretrain's anonymous memory against the data set's size: batches come from memory-mapped
shards, so RssAnon (memory not backed by a file: what a larger data set could exhaust) should not
grow with the events, only RssFile (the mapped pages, which the kernel can drop).

    python benchmarks/train_memory.py [--data /work/scale/prepared_200000,/work/scale/prepared_1000000]
                                      [--steps 30]

Each data set gets the same short CoLES pretrain (hidden 16, sequences cut to 32 events so the
validation pass over a large set stays short) (`mlem-ray pretrain`, a fixed step budget) in a
child process whose /proc/<pid>/status is polled every 0.1 s; prints the peak RssAnon and RssFile
of each and the ratio of the peaks' RssAnon (largest / smallest set).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_kb(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def measure(data: Path, steps: int, tmp: Path) -> dict:
    cmd = [sys.executable, "-m", "mlem_ray", "pretrain", "--data", str(data), "--method", "coles",
           "--out", str(tmp / f"run-{data.name}"), "--set", f"train.budget_steps={steps}",
           "--set", f"train.steps_per_epoch={steps}", "--set", "train.epochs=1", "--set", "data.batch_size=64",
           "--set", "train.selection_size=512", "--set", "model.hidden=16", "--set", "data.max_len=32"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "RssFile": 0}
    while proc.poll() is None:
        s = _status_kb(proc.pid)
        for k in peak:
            peak[k] = max(peak[k], s.get(k, 0))
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"pretrain on {data} failed: {err.strip().splitlines()[-1:]}")
    schema = json.loads((data / "schema.json").read_text())
    return {"data": str(data), "events": schema["counts"]["events_kept"], "sequences": schema["counts"]["sequences_kept"],
            "seconds": time.perf_counter() - t, "rss_anon_mb": peak["RssAnon"] / 1024, "rss_file_mb": peak["RssFile"] / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/scale/prepared_200000,/work/scale/prepared_1000000")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in args.data.split(","):
            r = measure(Path(d), args.steps, Path(tmp))
            rows.append(r)
            print(f"{r['events']:>12,} events {r['sequences']:>9,} sequences  peak RssAnon {r['rss_anon_mb']:8.1f} MB  "
                  f"peak RssFile {r['rss_file_mb']:8.1f} MB  ({r['seconds']:.0f} s)", flush=True)
    small, large = min(rows, key=lambda r: r["events"]), max(rows, key=lambda r: r["events"])
    print(f"events x{large['events'] / small['events']:.1f}: peak RssAnon x{large['rss_anon_mb'] / small['rss_anon_mb']:.2f}, "
          f"RssFile x{large['rss_file_mb'] / max(small['rss_file_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
