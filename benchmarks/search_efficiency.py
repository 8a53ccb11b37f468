"""How much compute each search choice needs: best downstream score against cumulative trial-seconds
for random search, TPE, TPE + ASHA and warm-started TPE + ASHA, at an equal budget per sweep.

    python benchmarks/search_efficiency.py [--datasets pendulum flights] [--reps 0 1 2] [--budget-s 30]
        [--work DIR] [--plot-only]

Every sweep is one CoLES stage over the same space (learning rate, margin, width, slice lengths) on
one data set, run through the sweep's own stage runner (sweep/tuner.py: OptunaSearch, ASHA, the
evaluation actor's tree probe downstream), one trial at a time, for the same wall-clock budget
(Tune's time_budget_s), trials made tiny (few steps per epoch) so that a budget holds many. A
repetition r uses sampler seed r; the warm-started sweep of repetition r is seeded with the cold
TPE + ASHA sweep of repetition r + 1 (mod the repetitions): "last week's sweep on the same data"
(sweep/warm_start.py: its best configs first, its whole study added).

x: the trials' own running time (Tune's time_total_s), summed in completion order; y: the best
downstream score so far (the tree probe's CV score on the labelled training ids: MSE on Pendulum,
accuracy on flights). Each (data set, repetition) runs as one invocation (so that a shared machine
can interleave them) and leaves `<work>/<dataset>_rep<r>.json`; the last step (or --plot-only)
reads them all and writes `<work>/search_efficiency.png` and the table below.

Printed per data set, mean over the repetitions (and how many reached the mark at all):
- TPE+ASHA's trial-seconds to reach random search's final best, as a fraction of random search's
  total trial-seconds (target <= 0.30);
- warm-started TPE+ASHA's trials to reach the cold TPE+ASHA sweep's final best, as a fraction of
  the cold sweep's trials (target <= 0.5).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

METHODS = {"random": {"search": "random", "scheduler": "none"}, "tpe": {"search": "tpe", "scheduler": "none"},
           "tpe_asha": {"search": "tpe", "scheduler": "asha"}, "warm_tpe_asha": {"search": "tpe", "scheduler": "asha"}}
PARAMS = {
    "optim.lr": {"type": "log_float", "low": 1e-4, "high": 3e-2},
    "objective.margin": {"type": "float", "low": 0.2, "high": 1.0},
    "model.hidden": {"type": "int", "low": 8, "high": 96, "log": True},
    "data.slice_min": {"type": "int", "low": 3, "high": 15},
    "data.slice_max": {"type": "int", "low": 20, "high": 60},
    "data.batch_size": 32,
}
MAX_TRIALS = 500  # the budget, not the count, ends a sweep


def prepare_data(work: Path, name: str, sequences: int) -> Path:
    from mlem_ray.data import prepare, write_prepared
    from mlem_ray.data.ingest import IngestSpec

    out = work / f"data_{name}"
    if (out / "schema.json").exists():
        return out
    if name == "pendulum":
        from mlem_ray.data import pendulum

        events, targets = pendulum.generate(sequences, seed=0)
        spec = IngestSpec(id_col="id", time_col="time", num_cols=("x", "y"), target_col="L", task="regression")
    else:
        from mlem_ray.data import flights

        events, targets = flights.load("manufacturer")
        spec = IngestSpec(id_col="tailnum", time_col="time", cat_cols=flights.CAT_COLS, num_cols=flights.NUM_COLS,
                          time_unit="days", target_col="manufacturer", task="multiclass", max_len=40)
    write_prepared(out, *prepare(events, spec, targets), overwrite=True)
    return out


def stage_for(method: str, seed: int, args):
    from mlem_ray.sweep.space import SearchSpace

    sweep = {**METHODS[method], "trials": MAX_TRIALS, "epochs": args.epochs, "grace_period": 1, "reduction_factor": 2,
             "selection": "probe", "selection_size": args.probe_size, "seed": seed, "finalists": 1, "max_concurrent": 1}
    doc = {"method": "coles", "sweep": sweep, "params": {**PARAMS, "train.steps_per_epoch": args.steps}}
    return SearchSpace.from_dict(doc, f"{method}.yaml").stages["coles"].resolved("probe")


def curve(out: Path) -> list[dict]:
    """Scored trials in completion order: trial-seconds, downstream score."""
    from mlem_ray.evaluation import leaderboard

    board = leaderboard.read(out)
    scores = {r["trial_id"]: r for r in board.to_dict("records") if leaderboard.is_ok(r)}
    trials = []
    for result in (out / "coles").glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows and result.parent.name in scores:
            row = scores[result.parent.name]
            trials.append({"trial_id": result.parent.name, "end": rows[-1]["timestamp"], "seconds": rows[-1]["time_total_s"],
                           "epochs": len(rows), "score": float(row["primary_value"]), "mode": row["primary_mode"],
                           "params": json.loads(row["params"])})
    return sorted(trials, key=lambda t: t["end"])


def run_one(data: Path, work: Path, dataset: str, rep: int, method: str, args) -> dict:
    import ray

    from mlem_ray.evaluation.actor import EvaluatorPool, get_or_create_actor
    from mlem_ray.sweep import warm_start
    from mlem_ray.sweep.tuner import StageJob, StageOutput, StageSearch, TrialResources, run_stage

    out = work / f"{dataset}_rep{rep}_{method}"
    if (out / "done.json").exists():
        return json.loads((out / "done.json").read_text())
    stage = stage_for(method, rep, args)
    warm = None
    if method == "warm_tpe_asha":
        source = work / f"{dataset}_rep{(rep + 1) % args.n_reps}_tpe_asha"
        if not (source / "done.json").exists():  # the earlier sweep is another repetition's cold one
            run_one(data, work, dataset, (rep + 1) % args.n_reps, "tpe_asha", args)
        warm = warm_start.plan(str(source), {"coles": stage})["coles"]
    out.mkdir(parents=True, exist_ok=True)
    name = f"bench-{dataset}-{rep}-{method}"
    actor = get_or_create_actor(out, data, name, cpus=0, folds=2, tree_iters=100, aggregates=False)
    t0 = time.perf_counter()
    run_stage(StageJob("coles", stage, {"data.path": str(data), "train.threads": 1}), StageOutput(str(out)),
              EvaluatorPool.of(actor, name), TrialResources(cpus_per_trial=1.0, max_concurrent=1),
              StageSearch(warm=warm, time_budget_s=args.budget_s))
    wall = time.perf_counter() - t0
    ray.kill(actor)
    result = {"method": method, "wall_s": wall, "trials": curve(out)}
    (out / "done.json").write_text(json.dumps(result))
    return result


def running_best(trials: list[dict]) -> list[float]:
    best, out = math.nan, []
    for t in trials:
        better = t["score"] < best if t["mode"] == "min" else t["score"] > best
        if math.isnan(best) or better:
            best = t["score"]
        out.append(best)
    return out


def reached(trials: list[dict], target: float) -> int | None:
    """Index (0-based) of the first trial whose running best is at least as good as `target`."""
    for i, b in enumerate(running_best(trials)):
        if (b <= target if trials[0]["mode"] == "min" else b >= target):
            return i
    return None


def summarize(work: Path, datasets: list[str]) -> list[str]:
    lines = []
    for dataset in datasets:
        reps = sorted(work.glob(f"{dataset}_rep*.json"))
        if not reps:
            continue
        runs = [json.loads(p.read_text()) for p in reps]
        lines += [f"\n{dataset}: {len(runs)} repetition(s), budget {runs[0]['budget_s']:.0f} s wall per sweep",
                  f"{'method':<16}{'trials':>8}{'trial-s':>10}{'epochs':>8}{'final best':>12}"]
        for method in METHODS:
            rows = [r["sweeps"][method]["trials"] for r in runs if method in r["sweeps"]]
            if not rows:
                continue
            finals = [running_best(t)[-1] for t in rows if t]
            lines.append(f"{method:<16}{_mean([len(t) for t in rows]):>8.1f}"
                         f"{_mean([sum(x['seconds'] for x in t) for t in rows]):>10.1f}"
                         f"{_mean([sum(x['epochs'] for x in t) for t in rows]):>8.1f}"
                         f"{_mean(finals):>12.4g}  ({', '.join(f'{f:.4g}' for f in finals)})")
        ratios, warm_ratios = [], []
        for r in runs:
            s = r["sweeps"]
            rnd, tpe_asha = s.get("random", {}).get("trials"), s.get("tpe_asha", {}).get("trials")
            if rnd and tpe_asha:
                i = reached(tpe_asha, running_best(rnd)[-1])
                total = sum(x["seconds"] for x in rnd)
                ratios.append(sum(x["seconds"] for x in tpe_asha[:i + 1]) / total if i is not None else math.nan)
            warm = s.get("warm_tpe_asha", {}).get("trials")
            if tpe_asha and warm:
                i = reached(warm, running_best(tpe_asha)[-1])
                warm_ratios.append((i + 1) / len(tpe_asha) if i is not None else math.nan)
        lines.append(f"TPE+ASHA trial-seconds to random's final best / random's trial-seconds: "
                     f"{_fmt_ratios(ratios)} (target <= 0.30)")
        lines.append(f"warm TPE+ASHA trials to cold TPE+ASHA's final best / cold trials: "
                     f"{_fmt_ratios(warm_ratios)} (target <= 0.5)")
    return lines


def _mean(values) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def _fmt_ratios(ratios) -> str:
    hit = [r for r in ratios if math.isfinite(r)]
    per = ", ".join("not reached" if not math.isfinite(r) else f"{r:.2f}" for r in ratios)
    return f"mean {_mean(hit):.2f} over the {len(hit)} of {len(ratios)} repetitions that reached it ({per})" \
        if hit else f"not reached in any of {len(ratios)} repetitions"


def plot(work: Path, datasets: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [d for d in datasets if list(work.glob(f"{d}_rep*.json"))]
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(6 * max(1, len(present)), 4.2), squeeze=False)
    colours = dict(zip(METHODS, ("tab:gray", "tab:blue", "tab:orange", "tab:green")))
    for ax, dataset in zip(axes[0], present):
        for p in sorted(work.glob(f"{dataset}_rep*.json")):
            run = json.loads(p.read_text())
            for method, sweep in run["sweeps"].items():
                trials = sweep["trials"]
                if not trials:
                    continue
                x = [0.0]
                for t in trials:
                    x.append(x[-1] + t["seconds"])
                ax.step(x[1:], running_best(trials), where="post", color=colours[method], alpha=0.7,
                        label=method if p.name.endswith("rep0.json") else None)
        mode = "lower" if dataset == "pendulum" else "higher"
        ax.set_title(f"{dataset}: best downstream score so far")
        ax.set_xlabel("cumulative trial-seconds")
        ax.set_ylabel(f"tree probe CV {'MSE' if dataset == 'pendulum' else 'accuracy'} ({mode} is better)")
        ax.legend(fontsize=8)
    path = work / "search_efficiency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", choices=["pendulum", "flights"], default=["pendulum", "flights"])
    ap.add_argument("--reps", nargs="+", type=int, default=[0, 1, 2], help="repetitions to run now (sampler seeds)")
    ap.add_argument("--n-reps", type=int, default=3, help="repetitions in all (the warm start's source is rep + 1 mod this)")
    ap.add_argument("--budget-s", type=float, default=30.0, help="wall-clock budget per sweep")
    ap.add_argument("--sequences", type=int, default=600, help="Pendulum size")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="train.steps_per_epoch (tiny trials)")
    ap.add_argument("--probe-size", type=int, default=200)
    ap.add_argument("--work", default="/tmp/mlem_search_efficiency")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, namespace="mlem_ray", log_to_driver=False)
        for dataset in args.datasets:
            data = prepare_data(work, dataset, args.sequences)
            for rep in args.reps:
                sweeps = {m: run_one(data, work, dataset, rep, m, args) for m in METHODS}
                (work / f"{dataset}_rep{rep}.json").write_text(json.dumps({"budget_s": args.budget_s, "sweeps": sweeps}))
        ray.shutdown()
    print("\n".join(summarize(work, args.datasets)))
    print(f"\ncurves: {plot(work, args.datasets)}")


if __name__ == "__main__":
    main()
