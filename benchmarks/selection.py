"""Does the in-trial selection score rank trials the way the downstream probe does?

    python benchmarks/selection.py [--sequences 3000] [--trials 16] [--epochs 4] [--out DIR]

Runs a two-stage MLEM sweep on Pendulum on this machine's local Ray: a few CoLES teachers, then
the MLEM stage with `--trials` trials, no early stopping (every trial trains every epoch). The
MLEM stage sweeps the loss weights (w_align over 1..1000, w_rec, w_time), lr and sizes, so its
val_loss is on a different scale in every trial. The evaluation actor scores every trial's kept
checkpoint with the tree probe (k-fold CV on the labelled training pool): the "final" score.

Printed, over the MLEM trials, the Spearman rank correlation between the final tree-probe CV
score and
  (a) the in-trial score (probe_score: linear probe, 3-fold CV, on a fixed training-pool subset),
  (b) val_loss,
  (c) RankMe,
each read at the kept checkpoint (the one scored downstream) and at the last epoch. Correlations
are of "goodness" (each value signed so that higher is better), so +1 means the same ranking.
Also the in-trial score's share of trial wall time (the sum of its per-epoch seconds over the
trials' running time). Targets: (a) >= 0.8 and <= 10 % of trial time.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import spearmanr

from mlem_ray.data import pendulum, prepare, write_prepared
from mlem_ray.evaluation import leaderboard
from mlem_ray.sweep.pipeline import SweepJob, run_sweep

MODEL = {"model.encoder": "gru", "model.layers": 1, "model.cat_emb_dim": 8, "model.num_emb_dim": 4,
         "data.batch_size": 64}


def space(trials: int, epochs: int, steps: int) -> dict:
    teacher = {"method": "coles",
               "sweep": {"trials": 3, "scheduler": "none", "epochs": epochs, "seed": 0, "finalists": 3},
               "params": {**MODEL, "optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-2},
                          "objective.margin": {"type": "float", "low": 0.3, "high": 1.0},
                          "model.hidden": 64, "data.slices": 4, "data.slice_min": 10, "data.slice_max": 40,
                          "train.steps_per_epoch": steps}}
    mlem = {"method": "mlem",
            "sweep": {"trials": trials, "scheduler": "none", "epochs": epochs, "seed": 0, "finalists": 3},
            "params": {**MODEL, "optim.lr": {"type": "log_float", "low": 3e-4, "high": 1e-2},
                       "objective.w_align": {"type": "log_float", "low": 1.0, "high": 1000.0},
                       "objective.w_rec": {"type": "log_float", "low": 0.1, "high": 10.0},
                       "objective.w_time": {"type": "log_float", "low": 1.0, "high": 100.0},
                       "model.hidden": {"type": "int", "low": 16, "high": 128, "log": True},
                       "model.decoder_width": {"type": "int", "low": 32, "high": 64, "step": 32},
                       "model.decoder_heads": 2, "model.decoder_layers": 1, "model.decoder_ff": 64,
                       "train.steps_per_epoch": steps}}
    return {"stages": {"teacher": teacher, "mlem": mlem}}


def trial_history(experiment: Path) -> dict[str, list[dict]]:
    out = {}
    for result in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            out[result.parent.name] = rows
    return out


def at_checkpoint(history: list[dict], epoch: int) -> dict:
    return next((r for r in history if int(r.get("epoch", -1)) == epoch), history[-1])


def rho(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return float(spearmanr(x[ok], y[ok]).statistic) if ok.sum() >= 3 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=3000)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=0, help="train.steps_per_epoch (0: a full pass)")
    ap.add_argument("--out", default="", help="sweep directory (default: a new temporary one)")
    ap.add_argument("--json", default="", help="also write the figures to this file")
    args = ap.parse_args()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mlem_selection_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "pendulum"
    if not (data / "schema.json").exists():
        events, targets = pendulum.generate(args.sequences, seed=0)
        spec = pendulum.INGEST_SPEC
        write_prepared(data, *prepare(events, spec, targets))
    space_file = work / "space.yaml"
    space_file.write_text(yaml.safe_dump(space(args.trials, args.epochs, args.steps)))
    out = work / "sweep"
    t0 = time.perf_counter()
    run_sweep(SweepJob(out=str(out), data=str(data), space=str(space_file), folds=3), resume=(out / "sweep.json").exists())
    wall = time.perf_counter() - t0

    board = leaderboard.read(out)
    rows = board[board["stage"] == "mlem"].to_dict("records")
    history = trial_history(out / "mlem")
    final = [-r["primary_value"] for r in rows]  # tree CV MSE: lower is better
    kept = {"probe": [], "val_loss": [], "rankme": []}
    last = {"probe": [], "val_loss": [], "rankme": []}
    selection_s = trial_s = 0.0
    for r in rows:
        h = history[r["trial_id"]]
        ck_epoch = int(json.loads(Path(r["checkpoint"], "metrics.json").read_text()).get("epoch", h[-1]["epoch"]))
        for values, row in ((kept, at_checkpoint(h, ck_epoch)), (last, h[-1])):
            values["probe"].append(row.get("probe_score", np.nan))
            values["val_loss"].append(-row.get("val_loss", np.nan))
            values["rankme"].append(row.get("rankme", np.nan))
        selection_s += sum(x.get("selection_seconds", 0.0) for x in h)
        trial_s += h[-1]["time_total_s"]
    figures = {
        "trials": len(rows), "epochs": args.epochs, "sequences": args.sequences, "sweep_wall_s": wall,
        **{f"rho_{k}_kept": rho(v, final) for k, v in kept.items()},
        **{f"rho_{k}_last": rho(v, final) for k, v in last.items()},
        "selection_share": selection_s / trial_s if trial_s else float("nan"),
        "selection_s": selection_s, "trial_s": trial_s,
    }
    print(f"\nPendulum {args.sequences} sequences; MLEM stage {len(rows)} trials x {args.epochs} epochs, no early "
          f"stopping; final score = tree probe CV MSE on the labelled training pool")
    print("Spearman rank correlation with the final score (+1: same ranking)")
    print(f"{'':<34}{'at kept checkpoint':>20}{'at last epoch':>16}")
    for key, label in (("probe", "(a) in-trial probe_score"), ("val_loss", "(b) val_loss"), ("rankme", "(c) RankMe")):
        print(f"{label:<34}{figures[f'rho_{key}_kept']:>20.3f}{figures[f'rho_{key}_last']:>16.3f}")
    print(f"in-trial score: {selection_s:.1f} s of {trial_s:.1f} trial-seconds = {100 * figures['selection_share']:.1f} % "
          f"(target <= 10 %); sweep wall time {wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
