"""The shared evaluation actor: one per sweep, it scores finished trials' best checkpoints
downstream and keeps the leaderboard.

- Work arrives from a Tune callback as `score` calls; a plain (sync) actor runs them one at a time,
  so they queue in the actor's mailbox.
- Every result is appended to the leaderboard (evaluation/leaderboard.py; written to a temp file
  and renamed) *before* the call returns, and written to TensorBoard next to the trial.
- After a crash Ray restarts the actor (`max_restarts`) and retries unfinished calls
  (`max_task_retries`); the new instance reloads the leaderboard, so a row is never lost and a
  trial is never scored twice.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time

from .. import storage
from . import leaderboard


class Evaluator:
    """The actor's body (plain class, so it is testable without Ray)."""

    def __init__(self, sweep_dir, data_path, folds: int = 5, seed: int = 0, tree_iters: int = 300,
                 robustness: bool = False, threads: int = 1):
        self.sweep_dir = str(sweep_dir)  # a path or an object-store URI (storage.py)
        self.data_path = str(data_path)
        self.folds, self.seed, self.tree_iters, self.robustness = folds, seed, tree_iters, robustness
        self.threads = threads
        self.board = leaderboard.read(self.sweep_dir)
        self.restored_rows = len(self.board)
        # Scores run one at a time; the lock lets info() and rows() answer while a score is running.
        self._scoring = threading.Lock()

    def _done(self, trial_id: str) -> dict | None:
        if self.board.empty:
            return None
        hit = self.board[self.board["trial_id"] == trial_id]
        return hit.iloc[0].to_dict() if len(hit) else None

    def score(self, trial_id: str, stage: str, method: str, checkpoint: str, selection: dict, params: dict,
              seed: int = 0, reseed_of: str = "", trial_dir: str = "") -> dict:
        """Score once; a repeated call for the same trial returns the stored row. `selection`: the
        in-trial score at the checkpoint (selection_metric, selection_mode, selection_value) and its
        val_loss, stored beside the downstream score."""
        with self._scoring:
            return self._score(trial_id, stage, method, checkpoint, selection, params, seed, reseed_of, trial_dir)

    def _score(self, trial_id, stage, method, checkpoint, selection, params, seed, reseed_of, trial_dir) -> dict:
        done = self._done(trial_id)
        if done is not None:
            return done
        from threadpoolctl import threadpool_limits

        from .evaluate import evaluate_checkpoint

        with threadpool_limits(self.threads):
            result = evaluate_checkpoint(checkpoint, self.data_path, kinds=("tree", "linear"), folds=self.folds,
                                         seed=self.seed, robustness=self.robustness, tree_iters=self.tree_iters)
        metric, mode = leaderboard.downstream_metric(result["task"])
        row = {
            "trial_id": trial_id, "stage": stage, "method": method, "checkpoint": str(checkpoint),
            "selection_metric": str(selection.get("selection_metric", "val_loss")),
            "selection_mode": str(selection.get("selection_mode", "min")),
            "selection_value": float(selection.get("selection_value", float("nan"))),
            "val_loss": float(selection.get("val_loss", float("nan"))),
            "params": json.dumps(params, sort_keys=True, default=str), "seed": int(seed),
            "reseed_of": reseed_of, "primary_metric": metric, "primary_mode": mode,
            "primary_value": float(result[metric]), "scored_at": time.time(),
            **{k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        }
        self.board = leaderboard.append(self.sweep_dir, self.board, row)
        self._tensorboard(row, params, trial_dir)
        return row

    def _tensorboard(self, row: dict, params: dict, trial_dir: str) -> None:
        """Downstream metrics as an HParams run beside the trial's own curves, and the leaderboard
        as scalars in `<sweep>/tensorboard_leaderboard`."""
        from tensorboardX import SummaryWriter

        metrics = {f"downstream/{k}": v for k, v in row.items()
                   if isinstance(v, float) and k not in ("scored_at", "seed")}
        metrics[f"selection/{row['selection_metric']}"] = row["selection_value"]
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        hparams.update({"method": row["method"], "stage": row["stage"]})
        where = trial_dir or storage.join(self.sweep_dir, row["stage"], row["trial_id"])
        with _writable(storage.join(where, "downstream")) as local, SummaryWriter(local) as w:
            w.add_hparams(hparams, metrics, name=".")
        with _writable(storage.join(self.sweep_dir, "tensorboard_leaderboard")) as local, SummaryWriter(local) as w:
            step = len(self.board)
            w.add_scalar(f"leaderboard/{row['stage']}/{row['primary_metric']}", row["primary_value"], step)
            w.add_text("leaderboard/trial", f"{row['stage']} {row['trial_id']} {row['method']}: "
                       f"{row['primary_metric']}={row['primary_value']:.4g}", step)

    def rows(self) -> list[dict]:
        return self.board.to_dict("records")

    def info(self) -> dict:
        return {"pid": os.getpid(), "rows": len(self.board), "restored_rows": self.restored_rows}


@contextlib.contextmanager
def _writable(location: str):
    """A local directory for a writer that wants one (TensorBoard): `location` itself, or on object
    storage a temp dir uploaded there afterwards. Each writer makes a new event file, so an
    upload adds files and never replaces one."""
    if not storage.is_uri(location):
        yield location
        return
    with tempfile.TemporaryDirectory(prefix="mlem_ray_tb_") as local:
        yield local
        storage.upload(local, location)


def get_or_create_actor(sweep_dir, data_path, name: str, cpus: float = 0.0, **kwargs):
    """The named actor of this sweep (DESIGN.md pattern): created once, found again by name."""
    import ray

    actor_cls = ray.remote(Evaluator)
    return actor_cls.options(name=name, namespace="mlem_ray", get_if_exists=True, num_cpus=cpus, max_concurrency=2,
                             max_restarts=-1, max_task_retries=-1, lifetime=None).remote(
        str(sweep_dir), str(data_path), **kwargs)
