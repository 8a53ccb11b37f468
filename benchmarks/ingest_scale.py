"""Ingest at scale: streaming beside the in-memory path on the standard tables, events/s and peak RSS.

    python benchmarks/ingest_scale.py [--tables 20000,200000,1000000] [--large] [--memory-gb G]
                                      [--in-memory-max-events 25000000] [--json FILE]

The standard tables (`make_synthetic_events.py --mean-events 100 --seed 0 --clients N`) live in
/work/scale/c<N> (override with --root): 2M, 20M and 100M events; `--large` adds c4000000 (400M
events), which must be generated first, in pieces (`benchmarks/make_large_table.py --clients 4000000
--out /work/scale/c4000000`: the generator needs ~100 bytes of memory per event). A table is
c<N>/events.parquet or a directory c<N>/events/ of Parquet files. Each ingest
runs in a fresh child process (`mlem-ray data ingest` with the standard spec, --streaming on or
off), so its peak RSS is its own: the larger of its ru_maxrss and the sum of VmRSS over it and its
worker processes, polled every 0.2 s; `other_cores` is the CPU that other processes used meanwhile
(busy time in /proc/stat less the ingest's own, over its wall time: ~0 on a quiet machine). The in-memory
path runs only where it fits (--in-memory-max-events). Targets (issue 21): streaming peak RSS
within the budget and flat (100M within 1.2x of 20M); at least 1.5M events/s at 100M on 2 cores.
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

CHILD = r"""
import json, resource, sys, time
from mlem_ray.data.ingest import IngestSpec
from mlem_ray.data.streaming import ingest_any
events, targets, out, mode, memory_gb = sys.argv[1:6]
spec = IngestSpec(id_col="client_id", time_col="event_time", cat_cols=("mcc", "channel"),
                  num_cols=("amount", "balance"), target_col="target", task="binary")
t = time.perf_counter()
schema, path = ingest_any(events, out, spec, targets_path=targets, overwrite=True, streaming=mode,
                          memory_gb=float(memory_gb))
seconds = time.perf_counter() - t
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"seconds": seconds, "events": schema.counts["events_in"], "shards": len(schema.shards),
                  "path": path, "peak_kb": peak}))
"""


def _tree_rss_kb(pid: int) -> int:
    """VmRSS of a process and all its descendants (worker processes included)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return total


def events_of(table: Path) -> Path:
    return table / "events.parquet" if (table / "events.parquet").exists() else table / "events"


def _busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def run_one(table: Path, mode: str, memory_gb: float, tmp: Path, keep: Path | None = None) -> dict:
    out = tmp / f"out-{table.name}-{mode}"
    busy, own, wall = _busy_s(), _children_cpu_s(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(events_of(table)), str(table / "targets.parquet"),
                             str(out), mode, str(memory_gb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree_peak = 0
    while proc.poll() is None:
        tree_peak = max(tree_peak, _tree_rss_kb(proc.pid))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    # the child's CPU includes its worker processes' (it waited for them)
    other = max(0.0, (_busy_s() - busy) - (_children_cpu_s() - own)) / (time.perf_counter() - wall)
    if proc.returncode != 0:
        raise SystemExit(f"ingest of {table} ({mode}) failed: {stderr.strip().splitlines()[-1:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    if keep is not None and not keep.exists():
        tmp_keep = keep.with_name(f".{keep.name}.tmp-{os.getpid()}")
        shutil.move(str(out), tmp_keep)  # same file system as keep's parent only if tmp is there; move copies else
        os.rename(tmp_keep, keep)
    shutil.rmtree(out, ignore_errors=True)
    return {"table": table.name, "mode": "streaming" if mode == "on" else "in-memory", **result,
            "events_per_s": result["events"] / result["seconds"],
            "peak_gb": max(result["peak_kb"], tree_peak) / 2**20, "other_cores": round(other, 2)}


def main() -> None:
    from mlem_ray.data.streaming import default_memory_gb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/work/scale"))
    ap.add_argument("--tables", default="20000,200000,1000000", help="client counts of the tables to ingest")
    ap.add_argument("--large", action="store_true", help="also the 400M-event table (c4000000)")
    ap.add_argument("--memory-gb", type=float, default=default_memory_gb(), help="the budget (default %(default)s)")
    ap.add_argument("--in-memory-max-events", type=int, default=25_000_000,
                    help="run the in-memory path up to this table size (default %(default)s)")
    ap.add_argument("--tmp-dir", type=Path, help="where the outputs go (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--keep", type=Path, help="keep each streaming output as KEEP/prepared_<clients> where none exists")
    args = ap.parse_args()
    clients = [int(c) for c in args.tables.split(",") if c]
    if args.large:
        clients.append(4_000_000)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        for n in clients:
            table = args.root / f"c{n}"
            if not events_of(table).exists():
                print(f"skipped c{n}: {table} has no events.parquet or events/ (make_synthetic_events.py or "
                      f"make_large_table.py --clients {n})")
                continue
            import pyarrow.parquet as pq

            src = events_of(table)
            files = [src] if src.is_file() else sorted(src.glob("*.parquet"))
            events = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            modes = ["on"] + (["off"] if events <= args.in_memory_max_events else [])
            for mode in modes:
                keep = args.keep / f"prepared_{n}" if args.keep and mode == "on" else None
                r = run_one(table, mode, args.memory_gb, Path(tmp), keep)
                rows.append(r)
                print(f"{r['table']:>9} {r['events']:>12,} events  {r['mode']:>9}  {r['seconds']:7.1f} s  "
                      f"{r['events_per_s']:>11,.0f} events/s  peak RSS {r['peak_gb']:5.2f} GB  ({r['shards']} shards; "
                      f"other processes used {r['other_cores']:.2f} cores)",
                      flush=True)
    streaming = {r["table"]: r for r in rows if r["mode"] == "streaming"}
    print(f"budget --memory-gb {args.memory_gb}")
    for r in streaming.values():
        print(f"  {r['table']}: streaming peak {r['peak_gb']:.2f} GB = {r['peak_gb'] / args.memory_gb:.2f}x the budget "
              f"(target <= 1)")
    if "c200000" in streaming and "c1000000" in streaming:
        ratio = streaming["c1000000"]["peak_gb"] / streaming["c200000"]["peak_gb"]
        print(f"  streaming peak RSS 100M / 20M: {ratio:.2f}x (target <= 1.2)")
        print(f"  streaming events/s at 100M: {streaming['c1000000']['events_per_s']:,.0f} (target >= 1,500,000)")
    if "c200000" in streaming and "c4000000" in streaming:
        print(f"  streaming peak RSS 400M / 20M: {streaming['c4000000']['peak_gb'] / streaming['c200000']['peak_gb']:.2f}x; "
              f"events/s at 400M: {streaming['c4000000']['events_per_s']:,.0f}")
    for name in streaming:
        mem = [r for r in rows if r["table"] == name and r["mode"] == "in-memory"]
        if mem:
            print(f"  {name}: in-memory {mem[0]['events_per_s']:,.0f} events/s, peak {mem[0]['peak_gb']:.2f} GB; "
                  f"streaming {streaming[name]['events_per_s'] / mem[0]['events_per_s']:.2f}x its speed, "
                  f"{streaming[name]['peak_gb'] / mem[0]['peak_gb']:.2f}x its peak")
    if args.json:
        args.json.write_text(json.dumps({"memory_gb": args.memory_gb, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
