"""`mlem-ray sweep --budget 2h` (or `90m`, `1.5gpu-h`): stages sized to a compute budget from
measured step times, and a sweep that stops at the budget with its best so far.

The sizing rule, per stage, just before the stage runs (so that stage 2 is timed with its teacher):

1. A timing probe: one trial of the stage at the expensive corner of its space (every numeric
   param at its high end, the last choice of each categorical) trains ``PROBE_STEPS`` steps and
   scores itself once, as a Ray task with one trial's resources. Step time ``t_step`` = (epoch
   seconds - score seconds) / steps (validation included: a slight over-estimate, on purpose);
   score time ``t_eval``.
2. The stage gets the budget left, times the trial slots (trials at once), less ``RESERVE`` (Ray
   start-up, downstream scoring, trial start-up), split over the stages still to run in
   proportion to their ``sweep.trials``: ``T`` trial-seconds.
3. The cost of N trials of up to E epochs of S steps is ``epochs(N, E) (S t_step + t_eval /
   selection_every) + 3 s N`` (Tune's own per-trial overhead), where ``epochs(N, E)`` counts what the scheduler lets train: with ASHA (grace
   period g, reduction factor r) all N trials reach the first rung, ceil(N / r^j) pass rung j, so
   far fewer than N E epochs; without it N E. Starting from the file's N and E with every epoch a
   full pass over the training split (a demo's few-step epochs do not train, issue 25): if that
   costs more than ``T``, S shrinks (to ``MIN_STEPS``), then N (to ``MIN_TRIALS``), then E (to 1);
   if it costs less, E and N grow by one in turn while they fit (to ``MAX_EPOCHS``, ``MAX_TRIALS``).
4. Each stage stops at its share of the wall-clock budget (Tune's ``time_budget_s``): trials still
   running are stopped, and every trial that reported a checkpoint is scored; the sweep's best is
   the best among them.

``Ngpu-h`` is GPU-hours: the wall budget is that divided by the GPUs the trials use at once. The
sizes chosen are saved in ``<sweep>/budget.json`` (a resumed sweep runs the same stages).
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace

from ..errors import SweepError
from .space import StageSpace

PROBE_STEPS = 4
RESERVE = 0.15
MIN_STEPS = 5
MIN_TRIALS = 4
MAX_EPOCHS = 50
MAX_TRIALS = 200
# Scheduling, process reuse, result and checkpoint handling per trial (benchmarks/sweep_efficiency.py's
# inline-path overhead target).
TRIAL_OVERHEAD_S = 3.0
FILE = "budget.json"

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Budget:
    seconds: float  # as given (wall seconds, or GPU-seconds when gpu)
    gpu: bool = False

    def wall_seconds(self, gpus_at_once: float) -> float:
        if not self.gpu:
            return self.seconds
        if gpus_at_once <= 0:
            raise SweepError("--budget in GPU-hours needs trials on GPUs (--gpus-per-worker); give hours instead, e.g. 2h")
        return self.seconds / gpus_at_once


def parse(text: str) -> Budget:
    """'2h', '90m', '45s', '1.5gpu-h' -> Budget; anything else refused with one line."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(gpu-?)?(s|m|min|h)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise SweepError(f"--budget {text!r}: give a positive duration such as 2h, 90m, 600s or GPU-hours as 1.5gpu-h")
    return Budget(float(m.group(1)) * _UNITS[m.group(3)], gpu=bool(m.group(2)))


@dataclass(frozen=True)
class StageSize:
    trials: int
    epochs: int
    steps_per_epoch: int
    time_budget_s: float
    t_step: float  # measured
    t_eval: float  # measured


def total_epochs(stage: StageSpace, trials: int, epochs: int) -> float:
    """Epochs all `trials` train together under the stage's scheduler (rule 3 of the module
    docstring): ASHA's rungs at g, g r, g r^2, ... < epochs, each passing on ceil(1/r) of the trials
    that reached it; without ASHA every trial trains every epoch."""
    sweep = stage.sweep
    if sweep.scheduler != "asha":
        return float(trials * epochs)
    r, g = sweep.reduction_factor, min(sweep.grace_period, epochs)
    milestones = []
    m = g
    while m < epochs:
        milestones.append(m)
        m *= r
    milestones.append(epochs)
    total, before = 0.0, 0
    for j, m in enumerate(milestones):
        total += math.ceil(trials / r ** j) * (m - before)
        before = m
    return total


def size_stage(stage: StageSpace, trial_seconds: float, time_budget_s: float, t_step: float, t_eval: float,
               full_epoch_steps: int) -> StageSize:
    """Trials, epochs and steps per epoch that spend about `trial_seconds` (rule 3)."""
    sweep = stage.sweep
    every = max(1, sweep.selection_every)
    t_step = max(t_step, 1e-6)

    def cost(n: int, e: int, s: int) -> float:
        return total_epochs(stage, n, e) * (s * t_step + t_eval / every) + n * TRIAL_OVERHEAD_S

    n, e, s = sweep.trials, sweep.epochs, max(1, full_epoch_steps)
    # too dear: shorter epochs, then fewer trials, then fewer epochs
    if cost(n, e, s) > trial_seconds:
        per_epoch = (trial_seconds - n * TRIAL_OVERHEAD_S) / total_epochs(stage, n, e)
        s = max(MIN_STEPS, min(s, int((per_epoch - t_eval / every) / t_step)))
        while cost(n, e, s) > trial_seconds and n > MIN_TRIALS:
            n -= 1
        while cost(n, e, s) > trial_seconds and e > 1:
            e -= 1
    else:  # room to spare: one more epoch and one more trial in turn while they fit
        grew = True
        while grew:
            grew = False
            if e < MAX_EPOCHS and cost(n, e + 1, s) <= trial_seconds:
                e, grew = e + 1, True
            if n < MAX_TRIALS and cost(n + 1, e, s) <= trial_seconds:
                n, grew = n + 1, True
    return StageSize(trials=n, epochs=e, steps_per_epoch=int(s), time_budget_s=time_budget_s,
                     t_step=t_step, t_eval=t_eval)


def apply(stage: StageSpace, size: StageSize) -> StageSpace:
    """The stage with the sized trials, epochs and steps per epoch."""
    sweep = replace(stage.sweep, trials=size.trials, epochs=size.epochs,
                    grace_period=min(stage.sweep.grace_period, size.epochs),
                    finalists=min(stage.sweep.finalists, size.trials))
    return replace(stage, sweep=sweep, constants={**stage.constants, "train.steps_per_epoch": size.steps_per_epoch})


def expensive_corner(stage: StageSpace) -> dict:
    return {key: spec.cast(spec.corner(True)) for key, spec in stage.params.items()}


def probe(stage: StageSpace, fixed: dict, cpus: float, gpus: float) -> tuple[float, float, int]:
    """-> (seconds per step, seconds per in-trial score, steps in a full pass) measured by one short
    run at the stage's expensive corner, as a Ray task with one trial's resources."""
    import ray

    cfg = stage.config(expensive_corner(stage), fixed)
    cfg = cfg.replace(**{"train.epochs": 1, "train.steps_per_epoch": PROBE_STEPS})
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_probe_run)
    return ray.get(task.remote(cfg))


def _probe_run(cfg) -> tuple[float, float, int]:
    from ..data.prepared import EventSequences
    from ..training.loop import train

    seen: list[dict] = []

    class Keep:
        def report(self, metrics, checkpoint):
            seen.append(dict(metrics))

    train(cfg, Keep())
    m = seen[-1]
    steps = max(1, int(m.get("steps", PROBE_STEPS)))
    t_eval = float(m.get("selection_seconds", 0.0))
    seqs = EventSequences.open(cfg.data.path)
    rows = len(seqs.labelled("train") if cfg.objective.method == "supervised" else seqs.indices("train"))
    return max(0.0, float(m["epoch_seconds"]) - t_eval) / steps, t_eval, max(1, math.ceil(rows / cfg.data.batch_size))


class Planner:
    """Sizes each stage just before it runs, from the budget left (see the module docstring)."""

    def __init__(self, budget: Budget, stages: dict[str, StageSpace], slots: int, gpus_at_once: float,
                 saved: dict | None = None):
        self.wall = budget.wall_seconds(gpus_at_once)
        self.start = time.time()
        self.slots = max(1, slots)
        self.weights = {name: float(s.sweep.trials) for name, s in stages.items()}
        self.sizes: dict[str, StageSize] = {k: StageSize(**v) for k, v in (saved or {}).items()}

    def left(self) -> float:
        return max(0.0, self.wall - (time.time() - self.start))

    def plan(self, name: str, stage: StageSpace, fixed: dict, cpus: float, gpus: float) -> StageSpace:
        if name not in self.sizes:
            t_step, t_eval, full = probe(stage, fixed, cpus, gpus)
            todo = [n for n in self.weights if n not in self.sizes]
            share = self.weights[name] / sum(self.weights[n] for n in todo)
            wall = self.left() * share
            self.sizes[name] = size_stage(stage, wall * self.slots * (1 - RESERVE), wall, t_step, t_eval, full)
        return apply(stage, self.sizes[name])

    def saved(self) -> str:
        return json.dumps({k: asdict(v) for k, v in self.sizes.items()}, indent=1)
