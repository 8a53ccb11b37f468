"""The standard synthetic table at a size one process cannot generate in this machine's memory.

    python benchmarks/make_large_table.py --clients 4000000 --pieces 16 --out /work/scale/c4000000
        [--generator ../shared/bench/make_synthetic_events.py]

`make_synthetic_events.py` builds its whole table in memory, with temporaries of about 100 bytes
per event (400M events: ~40 GB, more than a 24 GiB machine has). This writes the same kind of
table in pieces: piece k is that script's `make(clients / pieces, --mean-events, seed k)` with its
client ids shifted by k * clients / pieces, written as ``events/part-<k>.parquet``; the targets of
all pieces go to one ``targets.parquet``. Same arguments -> identical files. The events directory
is what `mlem-ray data ingest --events` reads (a directory of Parquet files).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent


def load_generator(path: Path):
    spec = importlib.util.spec_from_file_location("make_synthetic_events", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--pieces", type=int, default=16)
    ap.add_argument("--mean-events", type=float, default=100)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--generator", type=Path, default=HERE.parent.parent / "shared" / "bench" / "make_synthetic_events.py")
    a = ap.parse_args()
    if a.clients % a.pieces:
        raise SystemExit(f"--clients {a.clients} is not a multiple of --pieces {a.pieces}")
    gen = load_generator(a.generator)
    per = a.clients // a.pieces
    tmp = a.out.with_name(f".{a.out.name}.tmp-{os.getpid()}")
    (tmp / "events").mkdir(parents=True)
    t, total, targets = time.time(), 0, []
    for k in range(a.pieces):
        events, tg = gen.make(per, a.mean_events, k)
        shift = pa.scalar(k * per, pa.int64())
        events = events.set_column(0, "client_id", pc.add(events.column("client_id"), shift))
        targets.append(tg.set_column(0, "client_id", pc.add(tg.column("client_id"), shift)))
        pq.write_table(events, tmp / "events" / f"part-{k:03d}.parquet")
        total += events.num_rows
        del events
        print(f"piece {k + 1}/{a.pieces}: {total:,} events so far, {time.time() - t:.0f} s", flush=True)
    pq.write_table(pa.concat_tables(targets), tmp / "targets.parquet")
    os.rename(tmp, a.out)
    print(f"{a.out}: {total} events, {a.clients} clients in {a.pieces} pieces, {time.time() - t:.1f}s")


if __name__ == "__main__":
    main()
