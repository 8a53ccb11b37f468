"""What the sweep hands the evaluation actors: one record per finished trial (`TrialRecord`), and
the in-trial figures that ranked it inside the sweep (`Selection`). The Tune callback and the
stage's driver build them (sweep/tuner.py); the pool and the actor take them whole
(evaluation/actor.py), so a new figure is one field here, not a parameter threaded through three
signatures. Both are frozen dataclasses of plain values: they pickle through Ray as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Selection:
    """The in-trial score at the kept checkpoint, stored on the trial's leaderboard row under these
    same column names (evaluation/leaderboard.py). The defaults are what a row says when the sweep
    told the actor nothing: ranked by val_loss, which is unknown."""

    selection_metric: str = "val_loss"  # the score that ranked trials (probe_score, rankme, val_loss, ...)
    selection_mode: str = "min"
    selection_value: float = math.nan
    val_loss: float = math.nan  # reported beside it, never compared across trials
    # A trial of several seeds (sweep.repeats): their mean and std, and how many (None: one seed).
    selection_mean: float | None = None
    selection_std: float | None = None
    repeats: float | None = None
    # A multi-objective stage (sweep.cost): its second objective at the kept checkpoint (None: none).
    cost_metric: str | None = None
    cost_value: float | None = None

    def columns(self) -> dict:
        """The row's in-trial columns, typed as the row stores them: the optional ones only where
        this trial has them."""
        return {f.name: str(v) if f.type.startswith("str") else float(v)
                for f in fields(self) if (v := getattr(self, f.name)) is not None}


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial to score: which trial, of which stage and method, where its kept
    checkpoint is, how it ranked inside the sweep, and what it ran with."""

    trial_id: str
    stage: str  # the leaderboard's stage label (teacher | mlem | compare_<method>)
    method: str
    checkpoint: str = ""  # a path or URI; "" for a trial that errored before keeping one
    selection: Selection = field(default_factory=Selection)
    params: dict = field(default_factory=dict)  # the swept values
    seed: int = 0
    reseed_of: str = ""  # a re-seeded copy of a finished config names the trial it repeats
    trial_dir: str = ""  # the trial's directory (TensorBoard writes its HParams session there)
