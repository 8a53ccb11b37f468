"""Throughput of 1 vs 2 CPU workers on the same data, and the start-up cost of each path.

    python benchmarks/scaling.py [--sequences 3000] [--epochs 3] [--method coles] [--gpus 0]

Runs, one after another on the same prepared Pendulum set and per-worker batch:
- inline: `train()` in this process (what `pretrain` does with one worker and no GPU);
- Ray Train, 1 worker; Ray Train, 2 workers (DDP, gloo), each worker with one torch thread
  (with --gpus 1: one GPU worker instead of the 2-worker run).
Throughput is training sequences per second over the epochs after the first (validation
excluded); start-up is the wall time not spent in epochs. Printed side by side.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import ray

from mlem_ray.config import make_config
from mlem_ray.data import EventSequences, pendulum, prepare, write_prepared
from mlem_ray.training import train
from mlem_ray.training.ray_train import run_distributed


class Collect:
    def __init__(self):
        self.rows = []

    def report(self, metrics, checkpoint):
        self.rows.append(metrics)


def summarise(name, rows, wall, train_sequences, workers):
    later = rows[1:] or rows
    seconds = sum(r["epoch_seconds"] for r in later)
    rate = train_sequences * len(later) / seconds
    startup = wall - sum(r["epoch_seconds"] for r in rows)
    return {"name": name, "workers": workers, "seq_per_s": rate, "startup_s": startup, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--method", default="coles")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--gpus", type=float, default=0.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlem_scaling_"))
    data = work / "p"
    events, targets = pendulum.generate(args.sequences, seed=0)
    spec = dataclasses.replace(pendulum.INGEST_SPEC, val_fraction=0.02)
    write_prepared(data, *prepare(events, spec, targets))
    n_train = len(EventSequences.open(data).indices("train"))
    cfg = make_config(args.method, {"data.path": str(data), "model.hidden": args.hidden, "train.epochs": args.epochs,
                                    "data.slice_min": 15, "data.slice_max": 60, "train.threads": 0})
    results = []
    t = time.perf_counter()
    collect = Collect()
    train(cfg, collect)
    results.append(summarise("inline (no Ray Train)", collect.rows, time.perf_counter() - t, n_train, 1))

    ray.init(include_dashboard=True, dashboard_host="127.0.0.1")
    runs = [("Ray Train, 1 CPU worker", 1, 0.0), ("Ray Train, 2 CPU workers", 2, 0.0)]
    if args.gpus:
        runs = [("Ray Train, 1 GPU worker", 1, args.gpus)]
    cpus = ray.cluster_resources().get("CPU", 2)
    for name, workers, gpus in runs:
        worker_cfg = cfg.replace(**{"train.threads": max(1, int(cpus // workers))})
        t = time.perf_counter()
        result = run_distributed(worker_cfg, workers, gpus, work / "train", name=name.replace(" ", "_").replace(",", ""),
                                 cpus_per_worker=cpus / workers if not gpus else 1.0)
        rows = result.metrics_dataframe.to_dict("records")
        # each worker trains on its shard; the global epoch covers the same training set
        results.append(summarise(name, rows, time.perf_counter() - t, (n_train // workers) * workers, workers))
    base = results[0]["seq_per_s"]
    print(f"\n{args.method}, {n_train} training sequences, per-worker batch {cfg.data.batch_size}, hidden {args.hidden}, "
          f"{args.epochs} epochs; {cpus:g} CPUs")
    print(f"{'run':<28}{'sequences/s':>14}{'vs inline':>11}{'start-up s':>12}{'wall s':>9}")
    for r in results:
        print(f"{r['name']:<28}{r['seq_per_s']:>14.1f}{r['seq_per_s'] / base:>11.2f}{r['startup_s']:>12.1f}"
              f"{r['wall_s']:>9.1f}")
    (Path(__file__).parent / "results").mkdir(exist_ok=True)
    (Path(__file__).parent / "results" / "scaling.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
