"""TPE + ASHA against random search without early stopping, at the same number of trials.

    python benchmarks/sweep_efficiency.py [--sequences 3000] [--trials 8] [--epochs 4]

Both sweep the same CoLES space on the same Pendulum set, on this machine's local Ray. Printed
side by side: the best downstream score reached (tree probe CV MSE on the training ids, and that
trial's test MSE), and the compute spent (trial-seconds: the sum of the trials' own running times).
Then the per-trial overhead of the inline path: trials that train one tiny step, one at a time;
the time from the first trial's start to the last one's end, minus the time spent inside the
trials, per trial (Tune's scheduling, trial process start, result and checkpoint handling). The
stage's whole wall time, with Ray start-up and downstream scoring, is printed beside it.
Target: under 3 s per trial.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from mlem_ray.data import pendulum, prepare, write_prepared
from mlem_ray.evaluation import leaderboard
from mlem_ray.sweep.pipeline import SweepJob, run_sweep

PARAMS = {
    "optim.lr": {"type": "log_float", "low": 1e-4, "high": 3e-2},
    "objective.margin": {"type": "float", "low": 0.2, "high": 1.0},
    "model.hidden": {"type": "int", "low": 16, "high": 128, "log": True},
    "data.slice_min": {"type": "int", "low": 5, "high": 20},
    "data.slice_max": {"type": "int", "low": 30, "high": 80},
    "data.batch_size": 64,
}


def trial_seconds(experiment: Path) -> tuple[float, int, float]:
    """-> (sum of the trials' own running times, epochs trained, first trial start to last end)."""
    total, epochs, starts, ends = 0.0, 0, [], []
    for result in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            total += rows[-1]["time_total_s"]
            epochs += len(rows)
            ends.append(rows[-1]["timestamp"])
            starts.append(rows[-1]["timestamp"] - rows[-1]["time_total_s"])
    return total, epochs, (max(ends) - min(starts)) if ends else 0.0


def sweep(data: Path, work: Path, name: str, sweep_settings: dict, params: dict) -> dict:
    space = work / f"{name}.yaml"
    space.write_text(yaml.safe_dump({"method": "coles", "sweep": sweep_settings, "params": params}))
    out = work / name
    t = time.perf_counter()
    run_sweep(SweepJob(out=str(out), data=str(data), space=str(space), folds=3))
    wall = time.perf_counter() - t
    board = leaderboard.read(out)
    best = leaderboard.best(board)
    seconds, epochs, span = trial_seconds(out / "coles")
    return {"wall_s": wall, "trial_s": seconds, "epochs": epochs, "trials": len(board), "span_s": span,
            "best_cv_mse": float(best["primary_value"]), "best_test_mse": float(best["tree_test_mse"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=3000)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15, help="train.steps_per_epoch")
    ap.add_argument("--overhead-trials", type=int, default=10)
    ap.add_argument("--only-overhead", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlem_sweep_eff_"))
    data = work / "pendulum"
    events, targets = pendulum.generate(args.sequences, seed=0)
    spec = pendulum.INGEST_SPEC
    write_prepared(data, *prepare(events, spec, targets))
    params = {**PARAMS, "train.steps_per_epoch": args.steps}
    common = {"trials": args.trials, "epochs": args.epochs, "seed": 0, "finalists": 1}
    if not args.only_overhead:
        compare(data, work, args, common, params)
    tiny = {"optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-2}, "model.hidden": 8, "data.batch_size": 8,
            "data.slice_min": 5, "data.slice_max": 10, "train.steps_per_epoch": 1}
    over = sweep(data, work, "overhead", {"trials": args.overhead_trials, "epochs": 1, "scheduler": "none",
                                          "max_concurrent": 1, "finalists": 1}, tiny)
    per_trial = (over["span_s"] - over["trial_s"]) / over["trials"]
    print(f"\ninline path overhead: {over['trials']} one-step trials one at a time: {over['span_s']:.0f} s from the "
          f"first trial's start to the last one's end, {over['trial_s']:.1f} s inside the trials -> "
          f"{per_trial:.2f} s per trial (target < 3 s). With Ray start-up and the actor's downstream scoring "
          f"of every trial, the stage took {over['wall_s']:.1f} s wall ({over['wall_s'] / over['trials']:.2f} s per trial).")


def compare(data, work, args, common, params) -> None:
    tpe = sweep(data, work, "tpe_asha", {**common, "search": "tpe", "scheduler": "asha", "grace_period": 1,
                                         "reduction_factor": 2}, params)
    rnd = sweep(data, work, "random_full", {**common, "search": "random", "scheduler": "none"}, params)
    print(f"\nPendulum {args.sequences} sequences, {args.trials} trials x up to {args.epochs} epochs "
          f"({args.steps} steps each), CoLES; score = tree probe")
    print(f"{'':<28}{'TPE + ASHA':>14}{'random, no stop':>18}")
    for key, label in (("best_cv_mse", "best CV MSE (selection)"), ("best_test_mse", "its test MSE"),
                       ("trial_s", "compute, trial-seconds"), ("epochs", "epochs trained"),
                       ("wall_s", "sweep wall time, s")):
        print(f"{label:<28}{tpe[key]:>14.3f}{rnd[key]:>18.3f}")
    print(f"compute ratio (TPE+ASHA / random): {tpe['trial_s'] / rnd['trial_s']:.2f}")


if __name__ == "__main__":
    main()
