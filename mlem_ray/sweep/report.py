"""`mlem-ray report SWEEP_DIR`: the leaderboard of a finished (or running) sweep, side by side.

It reads only what the sweep driver leaves on disk (or in a bucket: SWEEP_DIR may be a storage
URI, read and written through mlem_ray/storage.py), so it works on a sweep copied off a cluster,
while a sweep still runs, and without Ray:

  leaderboard.parquet   one row per scored trial (the evaluation actor's; see evaluation/actor.py)
  space.yaml            the search space used (for Optuna's parameter importances)

and writes into ``<sweep>/report/`` (or ``out_dir``):

  report.md             the text below, also returned (the CLI prints it)
  metric_vs_trial.png   the primary downstream metric in scoring order, per method, with the running best
  methods.png           each method's best primary value (error bars where the best was re-seeded) on an
                        axis fitted to the values, with the aggregates baseline as a line
  selection_vs_downstream.png  in-trial score and val_loss vs the downstream metric (Spearman's rho)
  optuna_<stage>_*.png  Optuna's importances, parallel coordinates, slices, history (report_plots.py)
  projector/            TensorBoard projector of the best checkpoint's embeddings

Sections of the text:

1. Leaderboard: one line per stage (a stage sweeps one method; "teacher" is CoLES, "mlem" MLEM,
   "compare_<m>" a comparison): scored trials, the best trial by the primary metric and its mode,
   and that trial's primary value as mean +- std over its new seeds when it was re-seeded
   (rows with ``reseed_of`` = its id; the seed it was selected with is left out, as its score is
   biased by the selection), else as one seed with a hint how to re-seed; then the aggregate-features
   baseline, and whether each best embedding beats it and adds to it.
   A multi-objective stage (``sweep.cost``) then gets its Pareto front: the non-dominated trials by
   in-trial quality and cost, in the knee order that picks its finalists (sweep/pareto.py), and
   ``pareto_<stage>.png``.
2. The best trials' downstream metrics side by side (rows: metrics, columns: methods), and their params.
3. Optuna parameter importances (fANOVA, fixed seed) of the primary metric per stage with >= 3 scored
   trials whose params vary, using the stage's distributions from space.yaml.
4. Failed and errored trials, each with its reason: a scoring that failed (status failed) or a
   trial that ended in an error (status errored). They are kept out of everything above.

The work is split: report_board.py reads and cleans the leaderboard, report_stats.py holds the
numbers (per-method summaries, seed statistics, the Optuna study for importances), this module
writes the Markdown, and report_plots.py draws every plot.

Re-seeded rows repeat a finished config with another seed, so they are kept out of the trial counts,
the choice of the best, the importances and the per-trial plot: they only measure seed noise.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .. import storage
from ..errors import ReportError  # noqa: F401  (re-exported)
from ..evaluation import leaderboard
from . import report_plots
from .report_board import LEADERBOARD, load_leaderboard  # noqa: F401  (LEADERBOARD re-exported)
from .report_stats import (SPACE_FILE, MethodSummary, best_row, build_study, finite, fmt,  # noqa: F401
                           fmt_seeds, load_space, mean_std, parse_params, summarize)

REPORT_DIR = "report"
MIN_TRIALS_FOR_IMPORTANCE = 3
IMPORTANCE_SEED = 0
# Bookkeeping columns: everything else numeric on the leaderboard is a downstream metric.
_NOT_METRICS = set(leaderboard.BOOKKEEPING) - {"val_loss", "selection_value"}


# ---------------------------------------------------------------------------------------------
# public API


def build_report(sweep_dir: Path, out_dir: Path | None = None) -> str:
    """Build the report of ``sweep_dir``: write ``report.md`` and the PNG plots into ``out_dir``
    (default ``<sweep_dir>/report``) and return the text. On object storage the files are made
    in a local temp dir and uploaded."""
    target = str(out_dir) if out_dir is not None else storage.join(sweep_dir, REPORT_DIR)
    with storage.writable_dir(target, prefix="mlem_ray_report_") as local:
        text = _build_report(sweep_dir, local).replace(str(local), target)  # plots named where they go
        local.mkdir(parents=True, exist_ok=True)
        (local / "report.md").write_text(text, encoding="utf-8")
    return text


def _build_report(sweep_dir, out_dir: Path) -> str:
    everything = load_leaderboard(sweep_dir)
    ok = everything["status"].isin(["", leaderboard.OK])
    board, failures = everything[ok].reset_index(drop=True), everything[~ok].reset_index(drop=True)
    scored = []
    if len(board):
        groups = summarize(board)
        scored = [*leaderboard_section(groups, board, sweep_dir), "",
                  *report_plots.pareto_section(board, out_dir, report_plots.figure),
                  *metrics_section(groups), "",
                  *importance_section(board, sweep_dir), "", *plots_section(board, groups, out_dir, sweep_dir)]
    else:
        scored = ["No trial was scored: every trial on the leaderboard failed or errored (below)."]
    text = "\n".join([
        f"# Sweep report: {sweep_dir}",
        "",
        *scored,
        "",
        *failures_section(failures),
    ]).rstrip() + "\n"
    return text


def failures_section(failures: pd.DataFrame) -> list[str]:
    """One line per failed or errored trial with its reason; nothing when there is none."""
    if failures.empty:
        return []
    lines = [f"## Failed and errored trials ({len(failures)})", ""]
    for r in failures.to_dict("records"):
        lines.append(f"- {r['stage']} {r['trial_id']} ({r['method']}): {r['status']}: {r['error'] or 'no reason recorded'}")
    return lines


# ---------------------------------------------------------------------------------------------
# text sections (the numbers: report_stats.py)


def leaderboard_section(groups: list[MethodSummary], board: pd.DataFrame, sweep_dir: Path) -> list[str]:
    """Methods side by side: counts, best trial, and its primary value over seeds."""
    metrics = sorted({g.metric for g in groups})
    lines = [f"## Leaderboard (primary metric: {', '.join(metrics)}; "
             f"{'lower' if groups[0].mode == 'min' else 'higher'} is better)", "",
             "| method | stage | scored trials | best trial | primary value (mean +- std over new seeds) | seeds |",
             "|---|---|---|---|---|---|"]
    needs_reseed = False
    for g in groups:
        if g.best is None:
            lines.append(f"| {g.method} | {g.stage} | {g.trials} | - | - (no trial scored a finite value) | - |")
            continue
        n = len(g.values)
        needs_reseed |= n < 2
        value = fmt_seeds(g.values).replace(f" ({n} seeds)", "")
        lines.append(f"| {g.method} | {g.stage} | {g.trials} | {g.best['trial_id']} | {value} | {n} |")
    reseeds = int((board["reseed_of"] != "").sum())
    if reseeds:
        lines += ["", f"{reseeds} re-seeded run(s) on the board (not counted as trials). A re-seeded best "
                      "config's value is the mean +- std over its new seeds only: the seed it was selected "
                      "with is left out, since picking the best of many trials biases that seed's score."]
    if needs_reseed:
        lines += ["", f"1 seed: run `mlem-ray report {sweep_dir} --reseed` for mean +- std over 3 new seeds "
                      "of each best config."]
    return lines + baseline_lines(groups, sweep_dir)


def baseline_lines(groups: list[MethodSummary], sweep_dir: Path) -> list[str]:
    """The aggregate-features baseline (scored once by the evaluation actor) against the best
    embedding, alone and concatenated with the aggregates."""
    base = leaderboard.read_baseline(sweep_dir)
    if not base:
        return []
    metric, mode = base["primary_metric"], base["primary_mode"]
    test = metric.replace("_cv_", "_test_").replace("_mean", "")
    lines = ["", f"Aggregate features ({base['features']} per sequence, the baseline): {metric} "
                 f"{fmt(base['primary_value'])}, {test} {fmt(base.get(test))}."]
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    scored = [g for g in groups if g.best is not None and g.metric == metric]
    for g in scored:
        alone = mean_std(g.values)[0]
        column = f"with_aggregates_{metric}"
        both = mean_std(g.seeds[column])[0] if column in g.seeds else math.nan
        verdict = "beats" if better(alone, base["primary_value"]) else "does not beat"
        text = f"- {g.label}: {verdict} the aggregates ({fmt(alone)})"
        if math.isfinite(both):
            text += (f"; embedding + aggregates {fmt(both)}, "
                     f"{'adds to' if better(both, base['primary_value']) else 'adds nothing to'} them")
        lines.append(text + ".")
    return lines


def metrics_section(groups: list[MethodSummary]) -> list[str]:
    """Every downstream metric of each best trial (mean +- std when re-seeded), and its params."""
    ranked = [g for g in groups if g.best is not None]
    if not ranked:
        return ["## Best trials", "", "No trial has a finite primary value yet."]
    columns = metric_columns(pd.concat([g.seeds for g in ranked], ignore_index=True))
    lines = ["## Best trials: downstream metrics", "",
             "| metric | " + " | ".join(_with_seeds(g) for g in ranked) + " |",
             "|---|" + "---|" * len(ranked)]
    for column in columns:
        cells = [_cell(g.seeds[column]) if column in g.seeds else "-" for g in ranked]
        lines.append(f"| {column} | " + " | ".join(cells) + " |")
    lines += ["", "## Best trials: params", ""]
    for g in ranked:
        params = parse_params(g.best["params"])
        shown = ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in sorted(params.items()))
        lines.append(f"- {g.label} `{g.best['trial_id']}`: {shown or '(no swept params)'}")
        repeats = pd.to_numeric(pd.Series([g.best["repeats"]]), errors="coerce").iloc[0]
        if math.isfinite(repeats) and repeats > 1:  # a trial of several seeds (sweep.repeats)
            lines.append(f"  in-trial score over its {int(repeats)} seeds: {fmt(g.best['selection_mean'])} +- "
                         f"{fmt(g.best['selection_std'])} (ranked by {g.best['selection_metric']} = "
                         f"{fmt(g.best['selection_value'])})")
        if g.best["checkpoint"]:
            lines.append(f"  checkpoint: {g.best['checkpoint']}")
    return lines


def _with_seeds(g: MethodSummary) -> str:
    n = len(g.values)
    new = " new" if g.reseeded else ""
    return f"{g.label}: mean +- std over {n}{new} seeds" if n > 1 else g.label + (" (1 new seed)" if new else "")


def _cell(values) -> str:
    """A table cell: the seed count is in the column header."""
    text = fmt_seeds(values)
    return text.rsplit(" (", 1)[0] if text.endswith(" seeds)") else text


def metric_columns(rows: pd.DataFrame) -> list[str]:
    """Numeric columns that are metrics (val_loss first, then by name); unknown extras included."""
    numeric = [c for c in rows.columns if c not in _NOT_METRICS
               and pd.to_numeric(rows[c], errors="coerce").notna().any()]
    return sorted(numeric, key=lambda c: (c != "val_loss", c))


def importance_section(board: pd.DataFrame, sweep_dir: Path) -> list[str]:
    """Which swept params moved the primary metric, per stage: a guide for narrowing the space."""
    lines = ["## Parameter importances (Optuna fANOVA on the primary metric)", ""]
    space, why = load_space(storage.join(sweep_dir, SPACE_FILE))
    if space is None:
        return lines + [f"Skipped: {why}."]
    originals = board[(board["reseed_of"] == "") & np.isfinite(board["primary_value"].astype(float))]
    for stage, rows in originals.groupby("stage", sort=False):
        lines.append(f"### {stage}")
        lines += stage_importances(str(stage), rows, space)
        lines.append("")
    return lines[:-1] if lines[-1] == "" else lines


def stage_importances(stage: str, rows: pd.DataFrame, space) -> list[str]:
    """Importances of one stage as a list of lines; any reason it cannot be computed is one line."""
    spec = space.stages.get(stage)
    if spec is None:
        return [f"Skipped: stage {stage!r} is not in {SPACE_FILE} (stages: {', '.join(space.stages)})."]
    if len(rows) < MIN_TRIALS_FOR_IMPORTANCE:
        return [f"Skipped: {len(rows)} scored trial(s); importances need >= {MIN_TRIALS_FOR_IMPORTANCE}."]
    study, varying, dropped = build_study(spec, rows)
    note = [f"({dropped} trial(s) left out: params outside {SPACE_FILE})"] if dropped else []
    if len(study.trials) < MIN_TRIALS_FOR_IMPORTANCE:
        return note + [f"Skipped: {len(study.trials)} trial(s) fit the space; importances need "
                       f">= {MIN_TRIALS_FOR_IMPORTANCE}."]
    if not varying:
        return note + ["Skipped: no swept param takes more than one value across the trials."]
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varying)
    except Exception as e:  # noqa: BLE001 (e.g. zero variance: every trial scored the same)
        return note + [f"Could not compute importances from {len(study.trials)} trials: {e}"]
    lines = [f"{len(study.trials)} trials:", ""]
    lines += [f"- {key}: {float(value):.3f}" for key, value in importances.items()]
    return note + lines


# ---------------------------------------------------------------------------------------------
# plots (all drawn in report_plots.py)


def plots_section(board: pd.DataFrame, groups: list[MethodSummary], out_dir: Path, sweep_dir: Path | None = None) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [report_plots.plot_metric_vs_trial(board, out_dir / "metric_vs_trial.png"),
             report_plots.plot_methods(groups, out_dir / "methods.png",
                          leaderboard.read_baseline(sweep_dir) if sweep_dir is not None else None)]
    lines = ["## Plots", ""] + [f"- {p}" for p in paths]
    lines += ["", "## Does the in-trial score agree with the downstream score?", ""]
    lines += report_plots.selection_scatter(board, out_dir / "selection_vs_downstream.png", report_plots.figure)
    if sweep_dir is None:
        return lines
    lines += ["", "## Optuna's view of each stage's study (value: the in-trial score)", ""]
    lines += report_plots.optuna_plots(sweep_dir, out_dir)
    state = storage.join(sweep_dir, "sweep.json")
    data = json.loads(storage.read_text(state)).get("data") if storage.exists(state) else None
    lines += ["", "## Embeddings of the best checkpoint (TensorBoard projector)", ""]
    lines += report_plots.projector(board, out_dir, data)
    return lines
