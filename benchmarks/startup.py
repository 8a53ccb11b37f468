"""Start-up time of `mlem-ray --help` (and other light commands): this tree against a baseline
revision, side by side, in the same run.

    python benchmarks/startup.py [--baseline REV] [--repeats N] [--json]

The baseline's `mlem_ray/` is taken with `git archive REV` into a temp dir; each command runs
`--repeats` times per side, interleaved (so both sides see the same machine load), in fresh
processes. Reported: median and min wall time, and which heavy modules the command imported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "optuna", "pandas", "pyarrow", "sklearn", "matplotlib")
COMMANDS = {"--help": ["--help"], "sweep --help": ["sweep", "--help"], "data pendulum --help": ["data", "pendulum", "--help"]}

# Runs the CLI in-process and lists the heavy modules it imported before exiting.
PROBE = ("import sys, runpy; sys.argv = ['mlem-ray', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('mlem_ray', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         f"print('HEAVY', ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")


def checkout(rev: str, into: Path) -> Path:
    data = subprocess.run(["git", "archive", rev, "mlem_ray"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_once(pythonpath: Path, args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"}, cwd=tempfile.gettempdir())
    took = time.perf_counter() - start
    heavy = next((line.split(" ", 1)[1] if " " in line else "" for line in done.stderr.splitlines()
                  if line.startswith("HEAVY")), "?")
    return took, heavy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="aa06f5a", help="git revision to compare with (default %(default)s: "
                                                         "main before issue 13)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"baseline": checkout(args.baseline, Path(tmp)), "this tree": ROOT}
        for name, cmd in COMMANDS.items():
            times = {side: [] for side in sides}
            heavy = {}
            for _ in range(args.repeats):
                for side, path in sides.items():
                    took, imported = run_once(path, cmd)
                    times[side].append(took)
                    heavy[side] = imported
            results[name] = {side: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
                                    "heavy_imports": heavy[side]} for side, t in times.items()}
    if args.json:
        print(json.dumps({"baseline": args.baseline, "repeats": args.repeats, "results": results}, indent=1))
        return
    print(f"mlem-ray start-up, {args.repeats} runs per side, interleaved (baseline {args.baseline})")
    print(f"{'command':<24} {'baseline median':>16} {'this tree median':>17}  heavy imports (baseline -> this tree)")
    for name, r in results.items():
        b, t = r["baseline"], r["this tree"]
        print(f"{name:<24} {b['median_s']:>14.2f} s {t['median_s']:>15.2f} s  "
              f"{b['heavy_imports'] or '-'} -> {t['heavy_imports'] or '-'}")


if __name__ == "__main__":
    main()
