"""What a trial, a scoring and a sweep cost as the data set grows: the standard table at 20k, 200k
and 1M sequences (about 100 events each), measured side by side in one run.

    python benchmarks/scale.py [--sizes 20000,200000,1000000] [--sweep-sizes 20000,200000]
                               [--parts epoch,evaluate,embed,baseline,score,sweep] [--skip-sweep]
                               [--scale-dir /work/scale] [--work DIR] [--results FILE]

Each size reads the prepared data set `<scale-dir>/prepared_<n>` (make it with `mlem-ray data ingest`
from `../shared/bench/make_synthetic_events.py --mean-events 100 --seed 0` tables; see
benchmarks/ingest_scale.py). Per size, each in its own process:
- epoch: `mlem-ray pretrain --method coles --epochs 1 --set model.hidden=64
  --set train.steps_per_epoch=20`: the epoch's own time (metrics.jsonl `epoch_seconds`, validation
  included) and the process's wall time, after the data set's files were read once into the page
  cache (the same warm start at every size), with the validation rows it used;
- evaluate: `mlem-ray evaluate` of that checkpoint with the default caps: wall time and peak RSS;
- embed: `mlem-ray embed --out FILE` of every sequence: wall time and peak RSS;
- baseline: the evaluation actor's aggregates baseline (once per sweep), one thread;
- score: one trial's scoring in the sweep's evaluation actor (`Evaluator.score` called directly on
  the checkpoint, the baseline already scored and the scoring rows' aggregate features computed, as
  the actor holds them from its second trial on; their computation is timed apart), one thread as
  on a small machine;
- sweep: a default `mlem-ray sweep --data <set>` (the quick space) wall time, at --sweep-sizes only.
Ratios are to the smallest size measured. Targets (issue 20): epoch at 200k and 1M within 1.5x of
20k, evaluate within 3x, the 200k sweep within 2x of the 20k sweep; peak RSS of evaluate and embed
under 2 GB at 1M. Peak RSS is the child's ru_maxrss (os.wait4): resident pages, file-backed
(memory-mapped data set pages touched) included.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("epoch", "evaluate", "embed", "baseline", "score", "sweep")
MLEM = [sys.executable, "-m", "mlem_ray"]

# One trial's scoring in the evaluation actor's body, one thread (the actor's share on a machine
# under 4 CPUs). "baseline": the aggregates baseline alone (once per sweep; baseline.json);
# "score": one trial, the baseline already in baseline.json (scored first if it is not) and the
# aggregate features in the process's cache, as in the actor from its second trial on.
SCORE_SNIPPET = """
import json, sys, time
from mlem_ray.evaluation.actor import Evaluator
from mlem_ray.evaluation.trial import TrialRecord
mode, sweep, data, ckpt = sys.argv[1:5]
ev = Evaluator(sweep, data, threads=1)
out = {}
if mode == "baseline":
    from threadpoolctl import threadpool_limits
    t0 = time.perf_counter()
    with threadpool_limits(1):
        base = ev._score_baseline()
    out["seconds"], out["n_train"], out["n_test"] = time.perf_counter() - t0, base["n_train"], base["n_test"]
else:
    if ev.baseline is None:
        ev.score(TrialRecord("warm-up", "bench", "coles", ckpt))
    # What the actor holds after its baseline: the scoring rows' aggregate features (computed once
    # per actor process, reused by every trial's embedding + aggregates probe). Timed apart.
    from mlem_ray.evaluation.aggregates import cached_features
    from mlem_ray.evaluation.subsets import scoring_rows
    t0 = time.perf_counter()
    cached_features(ev._data(), scoring_rows(ev._data(), ev.sizes["probe_size"], ev.sizes["test_size"]))
    out["features_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    row = ev.score(TrialRecord("trial", "bench", "coles", ckpt))
    out["seconds"], out["status"] = time.perf_counter() - t0, row["status"] + " " + str(row.get("error", ""))
    out["n_train"], out["n_test"] = row.get("n_train"), row.get("n_test")
print("RESULT " + json.dumps(out))
"""


def measure(cmd: list[str], timeout: float, log: Path) -> dict:
    """Run `cmd` -> {wall_s, rss_gb, rc, stdout}: its own peak RSS from os.wait4 on its pid
    (RUSAGE_CHILDREN would be the running maximum over every child so far)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out_path = log.with_suffix(".stdout")
    t0 = time.perf_counter()
    with open(log, "w") as err, open(out_path, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True, cwd=ROOT)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                return {"wall_s": float("nan"), "rss_gb": float("nan"), "rc": "timeout", "stdout": ""}
            time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - t0, "rss_gb": usage.ru_maxrss / 2**20, "rc": p.returncode,
            "stdout": out_path.read_text()}


def bench_size(n: int, data: Path, work: Path, parts: set[str], sweep: bool, timeout: float,
               val_size: int | None = None) -> dict:
    res: dict = {"n": n}
    run_dir = work / f"run_{n}"
    ckpt = run_dir / "best"
    if "epoch" in parts or not ckpt.exists():
        res["cache_read_s"] = read_into_page_cache(data)
        r = measure(MLEM + ["pretrain", "--data", str(data), "--method", "coles", "--epochs", "1",
                            "--set", "model.hidden=64", "--set", "train.steps_per_epoch=20", "--out", str(run_dir),
                            "--overwrite", *(["--set", f"train.val_size={val_size}"] if val_size is not None else [])],
                    timeout, work / f"pretrain_{n}.log")
        lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
        res["epoch_s"] = json.loads(lines[-1])["epoch_seconds"] if lines and r["rc"] == 0 else float("nan")
        res["pretrain_wall_s"] = r["wall_s"]
        res["val_rows"] = validated_rows(data, val_size)
    if "evaluate" in parts:
        r = measure(MLEM + ["evaluate", "--data", str(data), "--checkpoint", str(ckpt), "--json"], timeout,
                    work / f"evaluate_{n}.log")
        res["evaluate_s"], res["evaluate_rss_gb"] = (r["wall_s"], r["rss_gb"]) if r["rc"] == 0 else (float("nan"),) * 2
        if r["rc"] == 0:
            out = json.loads(r["stdout"][r["stdout"].index("{"):])
            res["evaluate_n_train"], res["evaluate_n_test"] = out.get("n_train"), out.get("n_test")
    if "embed" in parts:
        target = work / f"embed_{n}.parquet"
        r = measure(MLEM + ["embed", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(target)], timeout,
                    work / f"embed_{n}.log")
        res["embed_s"], res["embed_rss_gb"] = (r["wall_s"], r["rss_gb"]) if r["rc"] == 0 else (float("nan"),) * 2
        target.unlink(missing_ok=True)
    for part in ("baseline", "score"):
        if part not in parts:
            continue
        sweep_dir = work / f"score_{n}"
        sweep_dir.mkdir(exist_ok=True)
        (sweep_dir / "leaderboard.parquet").unlink(missing_ok=True)  # each run scores its trial afresh
        if part == "baseline":
            (sweep_dir / "baseline.json").unlink(missing_ok=True)
        r = measure([sys.executable, "-c", SCORE_SNIPPET, part, str(sweep_dir), str(data), str(ckpt)], timeout,
                    work / f"{part}_{n}.log")
        line = [x for x in r["stdout"].splitlines() if x.startswith("RESULT ")]
        got = json.loads(line[0][len("RESULT "):]) if line else {}
        res[f"{part}_s"], res[f"{part}_rss_gb"] = got.get("seconds", float("nan")), r["rss_gb"]
        if "features_s" in got:
            res["features_s"] = got["features_s"]
        res[f"{part}_rows"] = [got.get("n_train"), got.get("n_test")]
        if got.get("status", "ok").split()[0] != "ok":
            res[f"{part}_error"] = got["status"]
    if sweep:
        sweep_dir = work / f"sweep_{n}"
        shutil.rmtree(sweep_dir, ignore_errors=True)
        r = measure(MLEM + ["sweep", "--data", str(data), "--out", str(sweep_dir)], timeout, work / f"sweep_{n}.log")
        res["sweep_s"] = r["wall_s"] if r["rc"] == 0 else float("nan")
    return res


def read_into_page_cache(data: Path) -> float:
    """Read the data set's memory-mapped files once, so that every size's epoch starts from the same
    (warm) page cache: the first epoch after the files left the cache also waits for the disk
    (1M sequences: 16.1 s cold against 6.6 s warm, 2026-12-01), a cost of the disk, not of the code.
    -> seconds the read took."""
    t0 = time.perf_counter()
    for f in sorted(Path(data).glob("sequences*.arrow")):
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass
    return time.perf_counter() - t0


def validated_rows(data: Path, val_size: int | None = None) -> int:
    """How many sequences the epoch validated on: the validation split, capped at train.val_size
    (a split smaller than the cap is validated whole, so a small set's epoch does less of it)."""
    from mlem_ray.config import make_config
    from mlem_ray.data.prepared import EventSequences
    from mlem_ray.training.loop import validation_rows

    size = make_config("coles", {}).train.val_size if val_size is None else val_size
    return int(len(validation_rows(EventSequences.open(data), False, size)))


COLUMNS = [("val_rows", "validated rows"), ("epoch_s", "epoch s"), ("evaluate_s", "evaluate s"), ("evaluate_rss_gb", "evaluate GB"),
           ("embed_s", "embed s"), ("embed_rss_gb", "embed GB"), ("baseline_s", "baseline s"),
           ("features_s", "aggregates s"), ("score_s", "trial score s"), ("sweep_s", "sweep s")]


def table(rows: list[dict]) -> str:
    cols = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    base = rows[0]
    lines = ["| sequences | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            if v is None:
                cells.append("")
                continue
            if k == "val_rows":
                cells.append(f"{v:,}")
                continue
            ratio = "" if r is base or not base.get(k) or k.endswith("_gb") else f" ({v / base[k]:.2f}x)"
            cells.append(f"{v:.2f}{ratio}")
        lines.append(f"| {r['n']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# (column, limit, what it is compared with): ratio columns against the smallest size measured,
# absolute ones at the size named.
TARGETS = [("epoch_s", 1.5, "ratio"), ("evaluate_s", 3.0, "ratio"), ("sweep_s", 2.0, "ratio"),
           ("evaluate_rss_gb", 2.0, "GB at 1M"), ("embed_rss_gb", 2.0, "GB at 1M")]


def same_rows_verdict(rows: list[dict], key: str, limit: float) -> list[str]:
    """The epoch's growth with the data alone: the sizes that validated as many rows as the largest
    did, against the smallest of them (nothing when that is the smallest size measured, whose
    ratios the main verdict already gives)."""
    same = [r for r in rows if r.get(key) and r.get("val_rows") and r["val_rows"] == rows[-1].get("val_rows")]
    if len(same) < 2 or same[0] is rows[0]:
        return []
    ratios = [(r["n"], r[key] / same[0][key]) for r in same[1:]]
    shown = ", ".join(f"{n:,}: {v:.2f}x" for n, v in ratios)
    return [f"{key} at the same validated rows ({same[0]['val_rows']:,}): {shown} of {same[0]['n']:,} "
            f"(target <= {limit:g}x): {'met' if max(v for _, v in ratios) <= limit else 'NOT met'}"]


def verdicts(rows: list[dict]) -> list[str]:
    """One line per target: what was measured against it, and whether it holds."""
    lines, base = [], rows[0]
    for key, limit, kind in TARGETS:
        if kind == "ratio":
            got = [(r["n"], r[key] / base[key]) for r in rows[1:] if r.get(key) and base.get(key)]
            if got:
                worst = max(v for _, v in got)
                shown = ", ".join(f"{n:,}: {v:.2f}x" for n, v in got)
                lines.append(f"{key}: {shown} of {base['n']:,} (target <= {limit:g}x): "
                             f"{'met' if worst <= limit else 'NOT met'}")
            if key == "epoch_s":
                lines += same_rows_verdict(rows, key, limit)
        else:
            got = [r[key] for r in rows if r["n"] == 1_000_000 and r.get(key) is not None]
            if got:
                lines.append(f"{key}: {got[0]:.2f} GB at 1,000,000 (target < {limit:g} GB): "
                             f"{'met' if got[0] < limit else 'NOT met'}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20000,200000,1000000")
    ap.add_argument("--sweep-sizes", default="20000,200000")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {','.join(PARTS)}")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--scale-dir", default="/work/scale")
    ap.add_argument("--work", help="scratch directory (default: a new temp dir, removed at the end)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per command")
    ap.add_argument("--val-size", type=int, help="train.val_size for the epoch (default: the config's); the "
                    "smallest set's validation split size makes every epoch validate the same rows")
    ap.add_argument("--results", help="also write the table, the verdicts and the raw rows to this file")
    args = ap.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if args.skip_sweep:
        parts.discard("sweep")
    sizes = [int(s) for s in args.sizes.split(",")]
    sweep_sizes = {int(s) for s in args.sweep_sizes.split(",")} if "sweep" in parts else set()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mlem_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def report() -> None:  # after every size: a run cut short still leaves its table
        text = table(rows) + "\n\n" + "\n".join(verdicts(rows))
        print(text, flush=True)
        if args.results:
            Path(args.results).write_text(f"`python benchmarks/scale.py {' '.join(sys.argv[1:])}`, "
                                          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{text}\n\n"
                                          + "\n".join(json.dumps(r) for r in rows) + "\n")

    # Every size's cheap parts first, the sweeps (the long part) last.
    for n in sizes:
        data = Path(args.scale_dir) / f"prepared_{n}"
        if not (data / "schema.json").exists():
            print(f"skipping {n}: {data} is not a prepared data set", flush=True)
            continue
        rows.append(bench_size(n, data, work, parts - {"sweep"}, False, args.timeout, args.val_size))
        print(json.dumps(rows[-1]), flush=True)
        report()
    for row in rows:
        if row["n"] in sweep_sizes:
            row.update(bench_size(row["n"], Path(args.scale_dir) / f"prepared_{row['n']}", work, {"sweep"}, True,
                                  args.timeout))
            print(json.dumps(row), flush=True)
            report()
    print(f"logs in {work}" if args.work else "", end="")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
