"""TPE + ASHA against random search without early stopping, at the same number of trials.

    python benchmarks/sweep_efficiency.py [--sequences 3000] [--trials 8] [--epochs 4]

Both sweep the same CoLES space on the same Pendulum set, on this machine's local Ray. Printed
side by side: the best downstream score reached (tree probe CV MSE on the training ids, and that
trial's test MSE), and the compute spent (trial-seconds: the sum of the trials' own running times).
Then the per-trial overhead of the inline path: a sweep of trials that train for one tiny step,
its wall time per trial minus the training time inside the trials. Target: under 3 s per trial.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from mlem_ray.data import pendulum, prepare, write_prepared
from mlem_ray.data.ingest import IngestSpec
from mlem_ray.evaluation.actor import read_leaderboard
from mlem_ray.sweep.pipeline import SweepSettings, run_sweep

PARAMS = {
    "optim.lr": {"type": "log_float", "low": 1e-4, "high": 3e-2},
    "objective.margin": {"type": "float", "low": 0.2, "high": 1.0},
    "model.hidden": {"type": "int", "low": 16, "high": 128, "log": True},
    "data.slice_min": {"type": "int", "low": 5, "high": 20},
    "data.slice_max": {"type": "int", "low": 30, "high": 80},
    "data.batch_size": 64,
}


def trial_seconds(experiment: Path) -> tuple[float, int]:
    total, epochs = 0.0, 0
    for result in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            total += rows[-1]["time_total_s"]
            epochs += len(rows)
    return total, epochs


def sweep(data: Path, work: Path, name: str, sweep_settings: dict, params: dict) -> dict:
    space = work / f"{name}.yaml"
    space.write_text(yaml.safe_dump({"method": "coles", "sweep": sweep_settings, "params": params}))
    out = work / name
    t = time.perf_counter()
    run_sweep(SweepSettings(out=str(out), data=str(data), space=str(space), folds=3))
    wall = time.perf_counter() - t
    board = read_leaderboard(out)
    best = board.loc[board["primary_value"].idxmin()]
    seconds, epochs = trial_seconds(out / "coles")
    return {"wall_s": wall, "trial_s": seconds, "epochs": epochs, "trials": len(board),
            "best_cv_mse": float(best["primary_value"]), "best_test_mse": float(best["tree_test_mse"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=3000)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15, help="train.steps_per_epoch")
    ap.add_argument("--overhead-trials", type=int, default=6)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlem_sweep_eff_"))
    data = work / "pendulum"
    events, targets = pendulum.generate(args.sequences, seed=0)
    spec = IngestSpec(id_col="id", time_col="time", num_cols=("x", "y"), target_col="L", task="regression")
    write_prepared(data, *prepare(events, spec, targets))
    params = {**PARAMS, "train.steps_per_epoch": args.steps}
    common = {"trials": args.trials, "epochs": args.epochs, "seed": 0, "finalists": 1}
    tpe = sweep(data, work, "tpe_asha", {**common, "search": "tpe", "scheduler": "asha", "grace_period": 1,
                                         "reduction_factor": 2}, params)
    rnd = sweep(data, work, "random_full", {**common, "search": "random", "scheduler": "none"}, params)
    tiny = {"optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-2}, "model.hidden": 8, "data.batch_size": 8,
            "data.slice_min": 5, "data.slice_max": 10, "train.steps_per_epoch": 1}
    over = sweep(data, work, "overhead", {"trials": args.overhead_trials, "epochs": 1, "scheduler": "none",
                                          "max_concurrent": 1, "finalists": 1}, tiny)
    print(f"\nPendulum {args.sequences} sequences, {args.trials} trials x up to {args.epochs} epochs "
          f"({args.steps} steps each), CoLES; score = tree probe")
    print(f"{'':<28}{'TPE + ASHA':>14}{'random, no stop':>18}")
    for key, label in (("best_cv_mse", "best CV MSE (selection)"), ("best_test_mse", "its test MSE"),
                       ("trial_s", "compute, trial-seconds"), ("epochs", "epochs trained"),
                       ("wall_s", "sweep wall time, s")):
        print(f"{label:<28}{tpe[key]:>14.3f}{rnd[key]:>18.3f}")
    print(f"compute ratio (TPE+ASHA / random): {tpe['trial_s'] / rnd['trial_s']:.2f}")
    per_trial = (over["wall_s"] - over["trial_s"]) / over["trials"]
    print(f"\ninline path overhead: {over['trials']} one-step trials one at a time in {over['wall_s']:.1f} s wall, "
          f"{over['trial_s']:.1f} s inside the trials -> {per_trial:.2f} s per trial (target < 3 s; "
          f"includes Ray start-up, the actor's scoring and the driver's bookkeeping)")


if __name__ == "__main__":
    main()
