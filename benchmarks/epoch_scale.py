"""A 20-step epoch's time at growing data-set sizes, side by side in one run (issue: costs that do
not grow with the data). For each prepared set it runs

    mlem-ray pretrain --method coles --epochs 1 --set model.hidden=64 --set train.steps_per_epoch=20

in a fresh process and prints the epoch's seconds (from metrics.jsonl: train, validation, checkpoint
excluded), the whole command's wall time, and both as ratios to the first (smallest) set. Target:
the epoch at every size within 1.5x of the smallest.

    python benchmarks/epoch_scale.py /work/scale/prepared_20000 /work/scale/prepared_200000 \
        /work/scale/prepared_1000000 [--set train.val_size=0]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(data: str, extra: list[str]) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "mlem_ray", "pretrain", "--data", data, "--method", "coles", "--epochs", "1",
               "--out", str(out), "--set", "model.hidden=64", "--set", "train.steps_per_epoch=20", *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ})
        wall = time.perf_counter() - t0
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        sequences = json.loads((Path(data) / "schema.json").read_text())["counts"]["sequences_kept"]
        return row["epoch_seconds"], wall, sequences


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data", nargs="+")
    p.add_argument("--set", action="append", default=[], help="extra --set for every run")
    args = p.parse_args()
    extra = [x for s in args.set for x in ("--set", s)]
    rows = [one(d, extra) for d in args.data]
    base_epoch, base_wall = rows[0][0], rows[0][1]
    print(f"{'sequences':>10} {'epoch s':>8} {'x first':>8} {'command s':>10} {'x first':>8}")
    for epoch_s, wall, n in rows:
        print(f"{n:>10} {epoch_s:>8.2f} {epoch_s / base_epoch:>8.2f} {wall:>10.2f} {wall / base_wall:>8.2f}")


if __name__ == "__main__":
    main()
