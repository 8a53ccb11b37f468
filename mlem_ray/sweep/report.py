"""`mlem-ray report SWEEP_DIR`: the leaderboard of a finished (or running) sweep, side by side.

It reads only what the sweep driver leaves on disk (or in a bucket: SWEEP_DIR may be a storage
URI, read and written through mlem_ray/storage.py), so it works on a sweep copied off a cluster,
while a sweep still runs, and without Ray:

  leaderboard.parquet   one row per scored trial (the evaluation actor's; see evaluation/actor.py)
  space.yaml            the search space used (for Optuna's parameter importances)

and writes into ``<sweep>/report/`` (or ``out_dir``):

  report.md             the text below, also returned (the CLI prints it)
  metric_vs_trial.png   the primary downstream metric in scoring order, per method, with the running best
  methods.png           each method's best primary value (error bars where the best was re-seeded)
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

Re-seeded rows repeat a finished config with another seed, so they are kept out of the trial counts,
the choice of the best, the importances and the per-trial plot: they only measure seed noise.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import storage
from ..evaluation import leaderboard
from ..errors import ReportError  # noqa: F401  (re-exported)

LEADERBOARD = leaderboard.FILE
SPACE_FILE = "space.yaml"
REPORT_DIR = "report"
MIN_TRIALS_FOR_IMPORTANCE = 3
IMPORTANCE_SEED = 0
# Bookkeeping columns: everything else numeric on the leaderboard is a downstream metric.
_NOT_METRICS = set(leaderboard.BOOKKEEPING) - {"val_loss", "selection_value"}
_REQUIRED = ("trial_id", "method", "primary_value")


# ---------------------------------------------------------------------------------------------
# public API


def build_report(sweep_dir: Path, out_dir: Path | None = None) -> str:
    """Build the report of ``sweep_dir``: write ``report.md`` and the PNG plots into ``out_dir``
    (default ``<sweep_dir>/report``) and return the text. On object storage the files are made
    in a local temp dir and uploaded."""
    target = str(out_dir) if out_dir is not None else storage.join(sweep_dir, REPORT_DIR)
    if storage.is_uri(target):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mlem_ray_report_") as local:
            text = build_report(sweep_dir, Path(local)).replace(local, target)  # plots named where they go
            (Path(local) / "report.md").write_text(text, encoding="utf-8")
            storage.upload(local, target)
        return text
    sweep_dir = sweep_dir if storage.is_uri(sweep_dir) else Path(sweep_dir)
    out_dir = Path(target)
    everything = load_leaderboard(sweep_dir)
    ok = everything["status"].isin(["", leaderboard.OK])
    board, failures = everything[ok].reset_index(drop=True), everything[~ok].reset_index(drop=True)
    scored = []
    if len(board):
        groups = summarize(board)
        from .report_plots import pareto_section

        scored = [*leaderboard_section(groups, board, sweep_dir), "", *pareto_section(board, out_dir, _figure),
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
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return text


def load_leaderboard(sweep_dir: Path) -> pd.DataFrame:
    """The leaderboard with missing optional columns filled in, so a board from an older or newer
    driver (or one with extra columns) still reports; refused with one line when there is none."""
    path = leaderboard.path(sweep_dir)
    try:
        found = storage.is_dir(sweep_dir)
    except (OSError, storage.StorageError) as e:
        raise ReportError(f"{sweep_dir}: cannot read it ({str(e).splitlines()[0][:200]})") from None
    if not found:
        raise ReportError(f"{sweep_dir}: no such directory: give the --out directory of a sweep "
                          "(mlem-ray sweep --out DIR)")
    if not storage.exists(path):
        raise ReportError(f"{sweep_dir}: no {LEADERBOARD}: is this a sweep directory (mlem-ray sweep --out DIR)? "
                          "Has any trial finished?")
    try:
        board = leaderboard.read(sweep_dir)
    except Exception as e:  # noqa: BLE001 (pyarrow raises several kinds for a damaged file)
        raise ReportError(f"{path}: cannot read the leaderboard ({type(e).__name__}: {e}); "
                          "is a sweep still writing it? Try again") from None
    if board.empty:
        raise ReportError(f"{path}: the leaderboard is empty: no trial has been scored yet; "
                          "wait for the first trial to finish")
    missing = [c for c in _REQUIRED if c not in board.columns]
    if missing:
        raise ReportError(f"{path}: not a leaderboard (no column {missing[0]!r}); "
                          "it should be written by mlem-ray sweep")
    defaults = {"stage": board["method"], "primary_metric": "primary", "primary_mode": "min", "status": "ok",
                "selection_metric": "", "selection_mode": "", "selection_value": np.nan, "val_loss": np.nan,
                "error": "",
                "reseed_of": "", "params": "{}", "seed": 0, "scored_at": np.arange(len(board), dtype=float)}
    for column, value in defaults.items():
        if column not in board.columns:
            board[column] = value
    board["reseed_of"] = board["reseed_of"].fillna("").astype(str)
    board["status"] = board["status"].fillna("ok").astype(str)
    board["error"] = board["error"].fillna("").astype(str)
    board["trial_id"] = board["trial_id"].astype(str)
    board["primary_value"] = pd.to_numeric(board["primary_value"], errors="coerce")
    return board.reset_index(drop=True)


def failures_section(failures: pd.DataFrame) -> list[str]:
    """One line per failed or errored trial with its reason; nothing when there is none."""
    if failures.empty:
        return []
    lines = [f"## Failed and errored trials ({len(failures)})", ""]
    for r in failures.to_dict("records"):
        lines.append(f"- {r['stage']} {r['trial_id']} ({r['method']}): {r['status']}: {r['error'] or 'no reason recorded'}")
    return lines


# ---------------------------------------------------------------------------------------------
# the numbers


@dataclass
class MethodSummary:
    """One stage's result: its trials, its best trial and the seeds the best was run with."""

    stage: str
    method: str
    trials: int  # scored trials (re-seeds excluded)
    metric: str
    mode: str
    best: dict | None = None  # the best trial's leaderboard row
    # Its re-seeds when it has any, else the best row alone. The best row's own value is left out of
    # a re-seeded mean: it was chosen for being the best, so it is biased up (winner's curse).
    seeds: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def reseeded(self) -> bool:
        return len(self.seeds) > 0 and self.best is not None and bool((self.seeds["reseed_of"] != "").all())

    @property
    def label(self) -> str:
        return self.method if self.stage == self.method else f"{self.method} ({self.stage})"

    @property
    def values(self) -> np.ndarray:
        """The best config's primary values, one per seed (NaN seeds dropped)."""
        return finite(self.seeds["primary_value"]) if len(self.seeds) else np.array([])


def summarize(board: pd.DataFrame) -> list[MethodSummary]:
    """One summary per stage, in the order stages first appear on the leaderboard (the pipeline
    scores the teacher stage first, so it lists first)."""
    originals = board[board["reseed_of"] == ""]
    out = []
    for stage, rows in originals.groupby("stage", sort=False):
        mode = str(rows["primary_mode"].iloc[0])
        summary = MethodSummary(stage=str(stage), method=str(rows["method"].iloc[0]), trials=len(rows),
                                metric=str(rows["primary_metric"].iloc[0]), mode=mode)
        best = best_row(rows)
        if best is not None:
            summary.best = best.to_dict()
            reseeds = board[board["reseed_of"] == summary.best["trial_id"]]
            summary.seeds = reseeds.reset_index(drop=True) if len(reseeds) else best.to_frame().T
        out.append(summary)
    return out


def best_row(rows: pd.DataFrame) -> pd.Series | None:
    """The row with the best finite primary value (ties: the first scored); None if none is finite."""
    best = leaderboard.best(rows.assign(_row=rows.index), "primary")
    return None if best is None else rows.loc[best["_row"]]


def finite(values) -> np.ndarray:
    arr = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    return arr[np.isfinite(arr)]


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n-1; seeds are a sample of all seeds) and count."""
    arr = finite(values)
    if arr.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std, int(arr.size)


def fmt(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if not math.isfinite(value) else f"{value:.4g}"


def fmt_seeds(values) -> str:
    """``mean +- std (N seeds)`` or a single value."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "-"
    return f"{fmt(mean)} +- {fmt(std)} ({n} seeds)" if n > 1 else fmt(mean)


def parse_params(text) -> dict:
    """The params column is a JSON object; a damaged one becomes {} rather than failing the report."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------------
# text sections


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
        params = parse_params(g.best.get("params"))
        shown = ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in sorted(params.items()))
        lines.append(f"- {g.label} `{g.best['trial_id']}`: {shown or '(no swept params)'}")
        repeats = pd.to_numeric(pd.Series([g.best.get("repeats")]), errors="coerce").iloc[0]
        if math.isfinite(repeats) and repeats > 1:  # a trial of several seeds (sweep.repeats)
            lines.append(f"  in-trial score over its {int(repeats)} seeds: {fmt(g.best.get('selection_mean'))} +- "
                         f"{fmt(g.best.get('selection_std'))} (ranked by {g.best.get('selection_metric')} = "
                         f"{fmt(g.best.get('selection_value'))})")
        if g.best.get("checkpoint"):
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


def load_space(path):
    """The sweep's search space, or (None, why) — importances are optional, the report is not."""
    from .space import SearchSpace, SpaceError

    if not storage.exists(path):
        return None, f"no {SPACE_FILE} in the sweep directory (needed for the params' distributions)"
    try:
        return SearchSpace.from_text(storage.read_text(path), str(path)), ""
    except SpaceError as e:
        return None, f"cannot load {SPACE_FILE}: {e}"


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


def build_study(spec, rows: pd.DataFrame):
    """An in-memory Optuna study of a stage's scored trials -> (study, params that vary, trials
    dropped because a value lies outside the space's distribution, e.g. after the file was edited)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if str(rows["primary_mode"].iloc[0]) == "max" else "minimize"
    study = optuna.create_study(direction=direction)
    distributions = spec.optuna_space()
    seen: dict[str, set] = {key: set() for key in distributions}
    dropped = 0
    for _, row in rows.iterrows():
        params = parse_params(row["params"])
        kept = {k: _cast(spec.params[k], v) for k, v in params.items() if k in distributions}
        try:
            trial = optuna.trial.create_trial(params=kept, distributions={k: distributions[k] for k in kept},
                                              value=float(row["primary_value"]))
        except (ValueError, TypeError):
            dropped += 1
            continue
        study.add_trial(trial)
        for k, v in kept.items():
            seen[k].add(repr(v))
    # fANOVA uses the params every trial has; of those, the ones that vary.
    common = set(distributions)
    for trial in study.trials:
        common &= set(trial.params)
    varying = [k for k in distributions if k in common and len(seen[k]) > 1]
    return study, varying, dropped


def _cast(param_spec, value):
    try:
        return param_spec.cast(value)
    except (TypeError, ValueError):
        return value


# ---------------------------------------------------------------------------------------------
# plots


def plots_section(board: pd.DataFrame, groups: list[MethodSummary], out_dir: Path, sweep_dir: Path | None = None) -> list[str]:
    from . import report_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_metric_vs_trial(board, out_dir / "metric_vs_trial.png"),
             plot_methods(groups, out_dir / "methods.png")]
    lines = ["## Plots", ""] + [f"- {p}" for p in paths]
    lines += ["", "## Does the in-trial score agree with the downstream score?", ""]
    lines += report_plots.selection_scatter(board, out_dir / "selection_vs_downstream.png", _figure)
    if sweep_dir is None:
        return lines
    lines += ["", "## Optuna's view of each stage's study (value: the in-trial score)", ""]
    lines += report_plots.optuna_plots(sweep_dir, out_dir)
    state = storage.join(sweep_dir, "sweep.json")
    data = json.loads(storage.read_text(state)).get("data") if storage.exists(state) else None
    lines += ["", "## Embeddings of the best checkpoint (TensorBoard projector)", ""]
    lines += report_plots.projector(board, out_dir, data)
    return lines


def _figure(width=7.0, height=4.0):
    """A figure on the Agg canvas directly: no pyplot, no display, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_metric_vs_trial(board: pd.DataFrame, path: Path) -> Path:
    """Primary value against scoring order, one series per method, with each method's running best:
    shows whether the search was still improving when it stopped."""
    rows = board[board["reseed_of"] == ""].copy()
    rows["_order"] = pd.to_numeric(rows["scored_at"], errors="coerce").rank(method="first")
    rows = rows.sort_values("_order")
    rows["_order"] = np.arange(1, len(rows) + 1)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for i, (stage, g) in enumerate(rows.groupby("stage", sort=False)):
        g = g[np.isfinite(g["primary_value"].astype(float))]
        if g.empty:
            continue
        color = f"C{i % 10}"
        values = g["primary_value"].astype(float).to_numpy()
        mode = str(g["primary_mode"].iloc[0])
        best = np.maximum.accumulate(values) if mode == "max" else np.minimum.accumulate(values)
        method = str(g["method"].iloc[0])
        label = method if method == stage else f"{method} ({stage})"
        ax.plot(g["_order"], values, "o", color=color, alpha=0.6, label=label)
        ax.step(g["_order"], best, where="post", color=color, linewidth=1.5, label=f"{label}: running best")
    ax.set_xlabel("trial (scoring order)")
    ax.set_ylabel(_metric_label(board))
    ax.set_title("Primary downstream metric per trial")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_methods(groups: list[MethodSummary], path: Path) -> Path:
    """Each method's best primary value; error bars (std over seeds) where the best was re-seeded."""
    ranked = [g for g in groups if len(g.values)]
    fig = _figure(width=max(4.0, 1.4 * len(ranked) + 2), height=4.0)
    ax = fig.add_subplot(1, 1, 1)
    stats = [mean_std(g.values) for g in ranked]
    x = np.arange(len(ranked))
    means = [m for m, _, _ in stats]
    ax.bar(x, means, color=[f"C{i % 10}" for i in range(len(ranked))])
    seeded = [i for i, (_, _, n) in enumerate(stats) if n > 1]  # no bar-less caps on single seeds
    if seeded:
        ax.errorbar(x[seeded], [means[i] for i in seeded], yerr=[stats[i][1] for i in seeded],
                    fmt="none", ecolor="black", capsize=6)
    ax.set_xticks(x, [f"{g.label}\n({n} seed{'s' if n > 1 else ''})" for g, (_, _, n) in zip(ranked, stats)],
                  fontsize=8)
    metric = ranked[0].metric if ranked else "primary value"
    better = "lower" if (ranked and ranked[0].mode == "min") else "higher"
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.set_title("Best trial per method")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _metric_label(board: pd.DataFrame) -> str:
    names = board["primary_metric"].dropna().astype(str).unique()
    return names[0] if len(names) == 1 else "primary value"
