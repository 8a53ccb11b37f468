"""Every plot of the report (report.py writes the text around them):

- the primary downstream metric per trial in scoring order, with each method's running best;
- the methods chart: each method's best value (error bars over seeds) on an axis fitted to the
  values, with the aggregates baseline as a line;

- Optuna's own matplotlib visualisations of each stage's persisted study (sweep/optuna_storage.py):
  parameter importances, parallel coordinates, slices and optimisation history. The study's value
  is what the search optimised: the in-trial selection score.
- Does the in-trial score pick what the downstream probe would? A scatter of the selection score
  (and of val_loss) against the downstream primary metric, per stage, with Spearman's rank
  correlation.
- A TensorBoard projector of the best checkpoint's embeddings: a labelled subsample, the target as
  metadata (`tensorboard --logdir <sweep>/report/projector`, or the whole sweep).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .report_stats import MethodSummary, fmt, mean_std

PROJECTOR_DIR = "projector"
PROJECTOR_SAMPLE = 2000
OPTUNA_PLOTS = ("param_importances", "parallel_coordinate", "slice", "optimization_history")


def _pyplot():
    """pyplot for Optuna's plots, on the Agg backend unless the caller already chose one."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def optuna_plots(sweep_dir: Path, out_dir: Path) -> list[str]:
    """Optuna's four plots per stage study -> report lines (written files, or why a plot is skipped)."""
    import optuna

    from . import optuna_storage

    names = optuna_storage.study_names(sweep_dir)
    if not names:
        return [f"Optuna plots skipped: no {optuna_storage.FILE} in {sweep_dir} (a sweep from before it was kept)."]
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lines = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=optuna_storage.study_storage(sweep_dir))
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(done) < 2:
            lines.append(f"- {name}: Optuna plots skipped ({len(done)} complete trial(s); they need >= 2)")
            continue
        objective = (study.metric_names or ["in-trial score"])[0]
        for kind in OPTUNA_PLOTS:
            path = out_dir / f"optuna_{name}_{kind}.png"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    plot = getattr(optuna.visualization.matplotlib, f"plot_{kind}")
                    kwargs = {"evaluator": optuna.importance.FanovaImportanceEvaluator(seed=0)} if kind == "param_importances" else {}
                    if len(study.directions) > 1:  # a multi-objective stage: plot its quality objective
                        kwargs["target"] = _first_value
                    axes = plot(study, target_name=objective, **kwargs)
            except Exception as e:  # noqa: BLE001 (e.g. a param that never varied; fANOVA on 2 trials)
                lines.append(f"- {name} {kind}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
                continue
            panels = list(np.ravel(axes)) if isinstance(axes, np.ndarray) else [axes]
            fig = panels[0].figure
            for ax in panels:  # minor labels on a log axis (2x10^1, 3x10^1, ...) run into each other
                if ax.get_xscale() == "log":
                    ax.xaxis.set_minor_formatter(NullFormatter())
            if kind == "parallel_coordinate":  # one vertical axis per param, each with its own tick labels
                width = 1.7 * (len(done[0].params) + 1) + 2.0
            else:
                width = 3.4 * len(panels) + 1.0
            fig.set_size_inches(max(7.0, width), 4.5)
            title = panels[0].get_title()
            if title:
                panels[0].set_title(f"{name}: {title}")
            else:
                fig.suptitle(f"{name}: {kind.replace('_', ' ')} ({objective})", fontsize=11)
            # no tight_layout: it would move the panels under the colour bars Optuna placed
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            lines.append(f"- {path}")
    return lines


def _first_value(trial) -> float:
    return trial.values[0]


def pareto_section(board: pd.DataFrame, out_dir: Path, figure) -> list[str]:
    """Each multi-objective stage (rows with a cost_value): its Pareto front of in-trial quality
    against cost, listed (knee order, sweep/pareto.py) and drawn; [] when no stage has a cost."""
    from . import pareto

    lines = []
    originals = board[board["reseed_of"] == ""]
    for stage, rows in originals.groupby("stage", sort=False):
        records = rows.to_dict("records")
        if not pareto.has_cost(records):
            continue
        front = pareto.knee_order(pareto.non_dominated(records))
        cost = str(records[0]["cost_metric"] or "cost")
        quality = str(records[0]["selection_metric"] or "in-trial score")
        lines += [f"## Pareto front: {stage} ({quality} vs {cost}; {len(front)} of {len(records)} trials)", "",
                  "Knee order: both objectives rescaled over the front, by distance to the best quality at the "
                  "least cost; the stage's finalists are the first of these (sweep/pareto.py).", "",
                  f"| trial | {quality} | {cost} | downstream ({records[0]['primary_metric']}) |",
                  "|---|---|---|---|"]
        for r in front:
            lines.append(f"| {r['trial_id']} | {_num(r['selection_value'])} | {_num(r['cost_value'])} | "
                         f"{_num(r['primary_value'])} |")
        path = out_dir / f"pareto_{stage}.png"
        fig = figure(6.0, 4.0)
        ax = fig.add_subplot(111)
        ax.scatter(pd.to_numeric(rows["cost_value"], errors="coerce"),
                   pd.to_numeric(rows["selection_value"], errors="coerce"), color="0.6", label="trials")
        ordered = sorted(front, key=lambda r: float(r["cost_value"]))
        ax.plot([float(r["cost_value"]) for r in ordered], [float(r["selection_value"]) for r in ordered], "o-",
                color="tab:red", label="Pareto front")
        ax.set_xlabel(f"{cost} (lower is better)")
        ax.set_ylabel(f"{quality} ({'higher' if records[0]['selection_mode'] == 'max' else 'lower'} is better)")
        ax.set_title(f"{stage}: quality against cost")
        ax.legend(loc="best", fontsize=8)
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        lines += ["", f"- {path}", ""]
    return lines


def _num(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else "-"


def spearman(x, y) -> tuple[float, int]:
    """Spearman's rank correlation over the pairs where both are finite -> (rho, n); NaN when n < 3
    or either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan, n
    return float(spearmanr(x[ok], y[ok]).statistic), n


def selection_scatter(board: pd.DataFrame, path: Path, figure) -> list[str]:
    """Two panels: the in-trial selection score, and val_loss, against the downstream primary
    metric, one colour per stage, Spearman's rho in the legend -> report lines."""
    rows = board[board["reseed_of"] == ""]
    primary = str(rows["primary_metric"].dropna().iloc[0]) if len(rows) else "primary"
    mode = str(rows["primary_mode"].dropna().iloc[0]) if len(rows) else "min"
    fig = figure(width=11.0, height=4.5)
    lines = ["Spearman rank correlation with the downstream metric "
             f"({primary}, {'lower' if mode == 'min' else 'higher'} is better), per stage:", ""]
    for col, (x_col, x_label) in enumerate((("selection_value", "in-trial selection score"),
                                            ("val_loss", "validation loss"))):
        ax = fig.add_subplot(1, 2, col + 1)
        for i, (stage, g) in enumerate(rows.groupby("stage", sort=False)):
            x, y = g[x_col].astype(float).to_numpy(), g["primary_value"].astype(float).to_numpy()
            rho, n = spearman(x, y)
            metric = str(g["selection_metric"].iloc[0]) if x_col == "selection_value" else "val_loss"
            ax.scatter(x, y, color=f"C{i % 10}", alpha=0.8,
                       label=f"{stage} ({metric}): rho {rho:+.2f}, n={n}" if math.isfinite(rho) else f"{stage}: n={n}")
            lines.append(f"- {stage}: {metric} rho {rho:+.3f} (n={n})" if math.isfinite(rho)
                         else f"- {stage}: {metric} rho not defined (n={n})")
        names = sorted(set(rows["selection_metric"].astype(str))) if x_col == "selection_value" else ["val_loss"]
        ax.set_xlabel(f"{x_label}: {', '.join(names)}" + (" (higher is better)" if x_col == "selection_value"
                                                            and "val_loss" not in names else " (lower is better)"))
        ax.set_ylabel(f"{primary} ({'lower' if mode == 'min' else 'higher'} is better)")
        ax.set_title(f"{x_label} vs downstream score")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return lines + ["", f"- {path}"]


def projector(board: pd.DataFrame, out_dir: Path, data_path: str | None, sample: int = PROJECTOR_SAMPLE,
              seed: int = 0) -> list[str]:
    """The best checkpoint's embeddings of up to `sample` labelled sequences as a TensorBoard
    projector run in `out_dir/projector` (metadata: id, split, target) -> report lines."""
    from ..evaluation import leaderboard

    rows = board[board["reseed_of"] == ""].to_dict("records")
    main = [r for r in rows if r["stage"] == "mlem"] or rows
    best = leaderboard.best(main)
    if best is None or not data_path:
        return ["Projector skipped: no scored checkpoint, or the sweep's data set is unknown."]
    from .. import storage

    checkpoint = str(best["checkpoint"])
    if not storage.exists(storage.join(checkpoint, "model.pt")) or not storage.exists(storage.join(data_path, "schema.json")):
        return [f"Projector skipped: {checkpoint} or the data set {data_path} is not on this machine."]
    # A checkpoint or data set on object storage: read from this node's cached copy (storage.local_copy).
    checkpoint, data_path = storage.local_copy(checkpoint), str(storage.local_copy(data_path, by_content=True))
    from tensorboardX import SummaryWriter

    from ..data.prepared import EventSequences
    from ..evaluation.embed import embed_rows
    from ..training.checkpoint import load_encoder

    seqs = EventSequences.open(data_path)
    encoder, ckpt = load_encoder(checkpoint, seqs.schema)
    labelled = seqs.labelled()
    pick = np.sort(np.random.default_rng(seed).choice(labelled, size=min(sample, len(labelled)), replace=False))
    emb = embed_rows(encoder, seqs, pick, ckpt.state["trainer"].get("max_len", seqs.schema.max_len))
    ids = seqs.ids.take(pick).to_pylist()
    target = seqs.schema.target_col or "target"
    metadata = [[str(i), str(s), f"{t:.6g}"] for i, s, t in zip(ids, seqs.split[pick], seqs.targets[pick])]
    where = out_dir / PROJECTOR_DIR
    with SummaryWriter(str(where)) as w:
        w.add_embedding(emb, metadata=metadata, metadata_header=["id", "split", target],
                        tag=f"{best['stage']}_{best['trial_id']}")
    return [f"- {where}: {len(pick)} labelled sequences embedded by {best['stage']} trial {best['trial_id']} "
            f"(colour by {target}): tensorboard --logdir {where}"]


def figure(width=7.0, height=4.0):
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
    fig = figure()
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


def plot_methods(groups: list[MethodSummary], path: Path, baseline: dict | None = None) -> Path:
    """Each method's best primary value, with the aggregates baseline (baseline.json) as a line."""
    ranked = [g for g in groups if len(g.values)]
    fig = figure(width=max(4.0, 1.4 * len(ranked) + 2), height=4.0)
    draw_methods(fig.add_subplot(1, 1, 1), ranked, baseline)
    fig.tight_layout()
    fig.savefig(path)
    return path


def draw_methods(ax, ranked: list[MethodSummary], baseline: dict | None = None) -> None:
    """One point per method at its mean over seeds, error bars (std over seeds) where the best was
    re-seeded, and the aggregates baseline as a dashed line when it was scored on the same metric.
    The axis is fitted to the values, bars and baseline: methods often differ by 0.01 AUC, which an
    axis from 0 hides."""
    stats = [mean_std(g.values) for g in ranked]
    x = np.arange(len(ranked))
    means = np.array([m for m, _, _ in stats], dtype=float)
    stds = np.array([s if n > 1 else 0.0 for _, s, n in stats], dtype=float)  # no caps on single seeds
    for i in range(len(ranked)):
        ax.errorbar(x[i], means[i], yerr=stds[i] if stds[i] > 0 else None, fmt="o", markersize=8,
                    color=f"C{i % 10}", ecolor="black", capsize=6)
        ax.annotate(fmt(means[i]), (x[i], means[i]), xytext=(8, 0), textcoords="offset points",
                    va="center", fontsize=8)
    metric = ranked[0].metric if ranked else "primary value"
    spans = [means - stds, means + stds]
    if baseline and baseline.get("primary_metric") == metric and math.isfinite(float(baseline["primary_value"])):
        level = float(baseline["primary_value"])
        ax.axhline(level, color="grey", linestyle="--", linewidth=1.2,
                   label=f"aggregates baseline ({fmt(level)})")
        ax.legend(fontsize=8, loc="best")
        spans.append(np.array([level]))
    values = np.concatenate(spans) if ranked else np.array([])
    values = values[np.isfinite(values)]
    if values.size:
        low, high = float(values.min()), float(values.max())
        pad = 0.15 * (high - low) if high > low else max(abs(high) * 0.05, 1e-3)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlim(-0.6, len(ranked) - 0.4)
    ax.set_xticks(x, [f"{g.label}\n({n} seed{'s' if n > 1 else ''})" for g, (_, _, n) in zip(ranked, stats)],
                  fontsize=8)
    better = "lower" if (ranked and ranked[0].mode == "min") else "higher"
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.set_title("Best trial per method")
    ax.grid(axis="y", alpha=0.3)


def _metric_label(board: pd.DataFrame) -> str:
    names = board["primary_metric"].dropna().astype(str).unique()
    return names[0] if len(names) == 1 else "primary value"
