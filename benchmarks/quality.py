"""Downstream quality of every method on Pendulum at the same CPU budget (METHOD.md §6).

    python benchmarks/quality.py [--sequences 10000] [--budget 90] [--seeds 0 1 2]

Trains CoLES, generative, naive hybrid, MLEM (teacher: the CoLES run of the same seed),
supervised, and scores a random-init encoder, each over the seeds, every training run capped at
the same process CPU time (train.budget_cpu_s). Each encoder is scored by the tree probe (k-fold CV
on the labelled training ids + the fixed test set). Writes benchmarks/results/quality.{json,md}
with test MSE and R^2 as mean +- std over seeds, next to the mean predictor's MSE.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mlem_ray.config import make_config
from mlem_ray.data import prepare, write_prepared
from mlem_ray.data import pendulum
from mlem_ray.data.ingest import IngestSpec
from mlem_ray.data.prepared import EventSequences
from mlem_ray.evaluation.embed import embed_rows
from mlem_ray.evaluation.probes import mean_predictor_mse, probe
from mlem_ray.models.build import build_encoder
from mlem_ray.training import LocalReporter, load_encoder, train

METHODS = ("coles", "generative", "hybrid", "mlem", "supervised", "random")
RESULTS = Path(__file__).resolve().parent / "results"


def model_settings(hidden: int) -> dict:
    return {"model.hidden": hidden, "model.decoder_width": 64, "model.decoder_layers": 2, "model.decoder_ff": 128,
            "data.batch_size": 64, "data.slice_min": 15, "data.slice_max": 60, "train.epochs": 1000}


def score(encoder, seqs, max_len, seed, folds) -> dict:
    rows = seqs.labelled()
    emb = embed_rows(encoder, seqs, rows, max_len)
    s = probe(emb, seqs.targets[rows], seqs.split[rows], "regression", kind="tree", folds=folds, seed=seed)
    return {"mse": s["tree_test_mse"], "r2": s["tree_test_r2"], "cv_mse": s["tree_cv_mse_mean"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=10_000)
    ap.add_argument("--budget", type=float, default=90.0, help="process CPU seconds per training run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="reuse this folder's data and CoLES runs")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="a subset for a quick look (mlem needs coles runs in --work); only a full run "
                         "writes benchmarks/results/")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mlem_quality_"))
    data = work / "pendulum"
    if not (data / "schema.json").exists():
        events, targets = pendulum.generate(args.sequences, seed=0)
        spec = IngestSpec(id_col="id", time_col="time", num_cols=("x", "y"), target_col="L", task="regression",
                          test_fraction=0.1)
        write_prepared(data, *prepare(events, spec, targets))
    seqs = EventSequences.open(data)
    floor = mean_predictor_mse(seqs.targets[seqs.labelled()], seqs.split[seqs.labelled()])
    print(f"data: {len(seqs)} sequences, test {seqs.schema.counts['test']}; mean predictor test MSE {floor:.3f}", flush=True)
    results: dict = {m: [] for m in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            t0 = time.time()
            settings = {**model_settings(args.hidden), "data.path": str(data), "train.seed": seed}
            if method == "random":
                cfg = make_config("coles", settings)
                import torch

                torch.manual_seed(seed)
                encoder = build_encoder(cfg, seqs.schema, seqs.schema.max_len).eval()
                row = {"epochs": 0, "cpu_s": 0.0}
            else:
                if method == "mlem":
                    settings["objective.teacher"] = str(work / f"coles_s{seed}" / "best")
                settings["train.budget_cpu_s"] = args.budget
                cfg = make_config(method, settings)
                run = work / f"{method}_s{seed}"
                cpu0 = time.process_time()
                last = train(cfg, LocalReporter(run, stream=None))
                encoder, _ = load_encoder(run / "best", seqs.schema)
                row = {"epochs": last["epoch"] + 1, "cpu_s": time.process_time() - cpu0}
            row.update(score(encoder, seqs, seqs.schema.max_len, seed, args.folds))
            row["seed"] = seed
            results[method].append(row)
            print(f"seed {seed} {method:<10} test MSE {row['mse']:.3f}  R2 {row['r2']:.3f}  "
                  f"epochs {row['epochs']}  train CPU {row['cpu_s']:.0f} s  ({time.time() - t0:.0f} s wall)", flush=True)
    if set(args.methods) != set(METHODS):
        return
    summary = {m: {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows])))
                   for k in ("mse", "r2", "cv_mse")} for m, rows in results.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                      "mean_predictor_mse": floor, "runs": results,
                                                      "summary": summary}, indent=1))
    lines = [f"Pendulum, {len(seqs)} sequences ({seqs.schema.counts['test']} test), GRU hidden {args.hidden}, "
             f"{args.budget:.0f} CPU-s of training per run, seeds {args.seeds}, tree probe ({args.folds}-fold CV).",
             "", "| method | test MSE | test R^2 |", "|---|---|---|"]
    for m in METHODS:
        s = summary[m]
        lines.append(f"| {m} | {s['mse'][0]:.3f} +- {s['mse'][1]:.3f} | {s['r2'][0]:.3f} +- {s['r2'][1]:.3f} |")
    lines.append(f"| mean predictor | {floor:.3f} | 0 |")
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
