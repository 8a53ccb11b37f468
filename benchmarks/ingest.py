"""Ingest throughput and peak memory on a synthetic 1M-event table.

    python benchmarks/ingest.py [--ids 10000] [--mean-events 100] [--events FILE]

Makes a shuffled table (ids x ~mean events, 2 categorical, 2 numeric with some NaN), writes it to
Parquet, then runs the full `ingest` (read, validate, sort, encode, split, write both files) in a
fresh child process, so that peak RSS is measured for ingestion alone. Prints events/s and peak
memory as a multiple of the table's in-memory Arrow size. The ratio to pytorch-lifestream comes
only from benchmarks/vs_ptls.py (both side by side in one run).
Targets: >= 1,000,000 events/s and peak memory < 3x the table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq



def make_table(ids: int, mean_events: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    lengths = np.maximum(5, rng.poisson(mean_events, ids))
    n = int(lengths.sum())
    client = np.repeat(np.arange(ids), lengths)
    time_s = rng.uniform(0, 365 * 86400, n)
    mcc = rng.zipf(1.3, n) % 300
    channel = rng.integers(0, 5, n)
    amount = rng.lognormal(3, 1, n)
    amount[rng.random(n) < 0.01] = np.nan
    balance = rng.normal(0, 1, n)
    order = rng.permutation(n)  # rows arrive unsorted, as real exports often do
    return pa.table({
        "client_id": client[order], "event_time": time_s[order], "mcc": mcc[order],
        "channel": channel[order], "amount": amount[order], "balance": balance[order],
    })


CHILD = r"""
import json, resource, sys, time
from mlem_ray.data.ingest import IngestSpec, ingest
spec = IngestSpec(id_col="client_id", time_col="event_time", cat_cols=("mcc", "channel"),
                  num_cols=("amount", "balance"), max_len=1000, min_len=2)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
schema = ingest(sys.argv[1], sys.argv[2], spec, overwrite=True)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "events": schema.counts["events_in"], "base_kb": base, "peak_kb": peak}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=10_000)
    ap.add_argument("--mean-events", type=int, default=100)
    ap.add_argument("--events", type=Path, help="an existing event table with the columns above")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.events
        if path is None:
            path = Path(tmp) / "events.parquet"
            pq.write_table(make_table(args.ids, args.mean_events), path)
        table_bytes = pq.read_table(path).nbytes
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(Path(tmp) / "prepared")],
                                 check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = min(runs, key=lambda r: r["seconds"])
        rate = best["events"] / best["seconds"]
        peak_bytes = (max(r["peak_kb"] for r in runs) - best["base_kb"]) * 1024
        print(f"events                 {best['events']:,}")
        print(f"ingest time (best of {args.repeats}) {best['seconds']:.2f} s")
        print(f"ingest events/s        {rate:,.0f}   (target >= 1,000,000)")
        print(f"table in memory        {table_bytes / 2**20:.1f} MiB")
        print(f"peak RSS increase      {peak_bytes / 2**20:.1f} MiB = {peak_bytes / table_bytes:.2f}x the table (target < 3x)")


if __name__ == "__main__":
    main()
