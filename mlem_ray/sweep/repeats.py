"""A trial of S seeds (``sweep.repeats: S``): one config trained with seeds train.seed, +1, ...,
in lockstep inside the one trial, so that ASHA decides on the trial as a whole, epoch by epoch.

Why lockstep: the scheduler compares trials at each epoch, so each epoch's result must already
aggregate every seed. The seeds run as threads that take turns (only one trains at any moment:
a trial's CPU share is not oversubscribed): seed 0 trains epoch e and hands over at its report,
then seed 1 trains epoch e, ...; when every seed has reported epoch e the trial reports once.
Each seed's torch RNG state (CPU, and CUDA when in use) is saved at the hand-over and restored when its turn comes back, so a
seed trains exactly as it would alone.

What the trial reports (documented choice): the base seed's metrics, plus for the in-trial score m
``m_seed<k>``, ``m_mean``, ``m_std`` (population std over the seeds) and the objective
``m_robust`` = mean - std (mean + std for a metric minimised): a pessimistic score, as the MLEM
reference code and the EBES benchmark optimise, so that a config whose seeds disagree ranks below
a stable one of the same mean (with two seeds it is the worse seed). The trial's checkpoint is the
base seed's, with the other seeds' checkpoints inside it under ``repeats/seed_<k>/`` (a restored
trial resumes every seed from it); the downstream score is the base seed's encoder.
"""
from __future__ import annotations

import math
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

import numpy as np

SUBDIR = "repeats"


def robust_name(metric: str) -> str:
    return f"{metric}_robust"


def robust(values, mode: str) -> tuple[float, float, float]:
    """(objective, mean, std) over the seeds' values: mean - std for max, mean + std for min.
    A seed without a finite value makes all three NaN (the trial then ranks last)."""
    arr = np.asarray([float(v) if v is not None else math.nan for v in values], dtype=float)
    if arr.size == 0 or not np.isfinite(arr).all():
        return math.nan, math.nan, math.nan
    mean, std = float(arr.mean()), float(arr.std())
    return (mean - std if mode == "max" else mean + std), mean, std


def aggregate(per_seed: list[dict], metric: str, mode: str) -> dict:
    """One result from the seeds' results of one epoch (per_seed[0]: the base seed)."""
    out = dict(per_seed[0])
    values = [r.get(metric) for r in per_seed]
    for k, v in enumerate(values):
        out[f"{metric}_seed{k}"] = v
    out[robust_name(metric)], out[f"{metric}_mean"], out[f"{metric}_std"] = robust(values, mode)
    out["repeats"] = len(per_seed)
    return out


class _Stopped(BaseException):
    """Raised inside a seed's training when the trial ends (ASHA stopped it, or another seed failed)."""


class _SeedReporter:
    def __init__(self, k: int, box: queue.Queue, go: threading.Semaphore, stop: threading.Event):
        self.k, self.box, self.go, self.stop = k, box, go, stop

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        import torch

        kept = None
        if checkpoint is not None:  # the loop deletes its own copy once this returns
            kept = Path(tempfile.mkdtemp(prefix=f"mlem_ray_seed{self.k}_")) / "checkpoint"
            shutil.copytree(checkpoint, kept)
        rng = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        self.box.put(("epoch", self.k, dict(metrics), kept))
        self.go.acquire()  # the next seed trains now; wait for this seed's next turn
        if self.stop.is_set():
            raise _Stopped()
        torch.set_rng_state(rng)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def run_repeated(train_one: Callable, cfgs: list, report: Callable[[dict, Path | None], None], metric: str,
                 mode: str, resume: Path | None = None) -> None:
    """Train every config of `cfgs` (one per seed) in lockstep: `train_one(cfg, reporter, resume)`
    is the training loop; `report(metrics, checkpoint)` receives one aggregated result per epoch
    (see the module docstring). An error in any seed ends the trial with that error; an exception
    out of `report` (Tune stopping the trial) stops every seed first."""
    n = len(cfgs)
    box: queue.Queue = queue.Queue()
    go = [threading.Semaphore(0) for _ in range(n)]
    stop = threading.Event()

    def seed_resume(k: int) -> Path | None:
        if resume is None:
            return None
        path = Path(resume) if k == 0 else Path(resume) / SUBDIR / f"seed_{k}"
        return path if path.exists() else None

    def body(k: int) -> None:
        go[k].acquire()
        if stop.is_set():
            return
        try:
            train_one(cfgs[k], _SeedReporter(k, box, go[k], stop), seed_resume(k))
            box.put(("done", k, None, None))
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 (handed to the trial's own thread)
            box.put(("error", k, e, None))

    threads = [threading.Thread(target=body, args=(k,), name=f"seed-{k}", daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    alive = list(range(n))
    try:
        while alive:
            results: dict[int, tuple[dict, Path | None]] = {}
            for k in list(alive):
                go[k].release()
                kind, who, payload, kept = box.get()
                if kind == "error":
                    raise payload
                if kind == "done":
                    alive.remove(who)
                else:
                    results[who] = (payload, kept)
            if not results:
                break
            try:
                _report_round(results, report, metric, mode)
            finally:
                for _, kept in results.values():
                    if kept is not None:
                        shutil.rmtree(kept.parent, ignore_errors=True)
    finally:
        stop.set()
        for k in alive:
            go[k].release()
        for t in threads:
            t.join(timeout=60)


def _report_round(results: dict, report: Callable, metric: str, mode: str) -> None:
    seeds = sorted(results)
    combined = aggregate([results[k][0] for k in seeds], metric, mode)
    base_ckpt = results[seeds[0]][1]
    if base_ckpt is None:
        report(combined, None)
        return
    work = Path(tempfile.mkdtemp(prefix="mlem_ray_repeats_"))
    try:
        ckpt = work / "checkpoint"
        shutil.copytree(base_ckpt, ckpt)
        for k in seeds[1:]:
            if results[k][1] is not None:
                shutil.copytree(results[k][1], ckpt / SUBDIR / f"seed_{k}")
        report(combined, ckpt)
    finally:
        shutil.rmtree(work, ignore_errors=True)
