"""The report's numbers: one summary per stage (its best trial and the seeds that best was run
with), mean +- sample std over seeds, number formatting, and the in-memory Optuna study that
parameter importances are computed from."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import storage
from ..evaluation import leaderboard
from ..evaluation.leaderboard import parse_params

SPACE_FILE = "space.yaml"


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


def load_space(path):
    """The sweep's search space, or (None, why) — importances are optional, the report is not."""
    from .space import SearchSpace, SpaceError

    if not storage.exists(path):
        return None, f"no {SPACE_FILE} in the sweep directory (needed for the params' distributions)"
    try:
        return SearchSpace.from_text(storage.read_text(path), str(path)), ""
    except SpaceError as e:
        return None, f"cannot load {SPACE_FILE}: {e}"


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
