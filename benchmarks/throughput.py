"""CoLES training and inference throughput on the field's standard workload (docs/design.md#benchmark-workload), this
project alone. Ratios to pytorch-lifestream come only from benchmarks/vs_ptls.py, which runs both
side by side on one machine in one run (a figure measured elsewhere is not comparable).

    python benchmarks/throughput.py [--events DIR_OR_PARQUET] [--steps 40]

Workload: `make_synthetic_events.py --clients 10000 --mean-events 100 --seed 0` (the shared
generator when it is found beside the project, else the same-shaped table of
benchmarks/ingest.py): client_id, event_time, mcc (categorical), channel (categorical), amount,
balance. Model as the anchor measured it: GRU 256, mcc embedding 16, channel embedding 4, batch
64 clients x 5 slices of 25..100 events, Adam; inference on full sequences, batch 256.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHARED_GENERATOR = Path(__file__).resolve().parents[2] / "shared" / "bench" / "make_synthetic_events.py"


def events_file(arg: Path | None, tmp: Path) -> Path:
    if arg is not None:
        return arg / "events.parquet" if arg.is_dir() else arg
    if SHARED_GENERATOR.exists():
        subprocess.run([sys.executable, str(SHARED_GENERATOR), "--clients", "10000", "--mean-events", "100",
                        "--seed", "0", "--out", str(tmp / "synth")], check=True, capture_output=True)
        return tmp / "synth" / "events.parquet"
    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).parent))
    from ingest import make_table

    path = tmp / "events.parquet"
    pq.write_table(make_table(10_000, 100), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=Path)
    ap.add_argument("--steps", type=int, default=40, help="timed training steps (after 3 warm-up steps)")
    args = ap.parse_args()
    from mlem_ray.config import make_config
    from mlem_ray.data import EventSequences
    from mlem_ray.data.batching import SliceCollator, SliceSampler
    from mlem_ray.data.ingest import IngestSpec, ingest
    from mlem_ray.evaluation.embed import embed_rows
    from mlem_ray.training.loop import build_training_objective

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = events_file(args.events, tmp)
        spec = IngestSpec(id_col="client_id", time_col="event_time", cat_cols=("mcc", "channel"),
                          num_cols=("amount", "balance"), max_len=1000, min_len=2, val_fraction=0.0)
        ingest(source, tmp / "prepared", spec)
        seqs = EventSequences.open(tmp / "prepared")
        cfg = make_config("coles", {"data.path": str(tmp / "prepared"), "model.hidden": 256, "model.cat_emb_dim": 16,
                                    "data.batch_size": 64, "data.slices": 5, "data.slice_min": 25,
                                    "data.slice_max": 100})
        torch.manual_seed(0)
        objective = build_training_objective(cfg, seqs, 1000, torch.device("cpu"))
        opt = torch.optim.Adam(objective.parameters(), lr=1e-3)
        collate = SliceCollator(seqs, SliceSampler(5, 25, 100), seed=0)
        rows = np.random.default_rng(0).permutation(seqs.indices("train"))
        step_rows = [rows[i * 64:(i + 1) * 64] for i in range(args.steps + 3)]
        objective.train()
        for i, r in enumerate(step_rows):
            if i == 3:
                t0 = time.perf_counter()
            loss = objective(collate(r))["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_s = time.perf_counter() - t0
        clients_per_s = args.steps * 64 / train_s
        infer_rows = seqs.indices()[:2560]
        embed_rows(objective.encoder, seqs, infer_rows[:256], 1000)  # warm-up
        t0 = time.perf_counter()
        embed_rows(objective.encoder, seqs, infer_rows, 1000, batch_size=256)
        infer_per_s = len(infer_rows) / (time.perf_counter() - t0)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"workload: {source.name if args.events else ('shared generator' if SHARED_GENERATOR.exists() else 'benchmarks/ingest.py table')}, "
          f"{int(seqs.lengths.sum()):,} events, {len(seqs):,} clients; torch threads {torch.get_num_threads()}")
    print(f"{'CoLES training, clients/s':<30}{clients_per_s:>12.1f}")
    print(f"{'inference, sequences/s':<30}{infer_per_s:>12.1f}")
    print(f"peak RSS {peak_gb:.2f} GB  (ratios to pytorch-lifestream: benchmarks/vs_ptls.py)")


if __name__ == "__main__":
    main()
