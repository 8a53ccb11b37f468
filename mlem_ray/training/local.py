"""A plain local run's reporter: keeps `last/` (for --resume) and `best/` (lowest validation loss)
checkpoints in the run directory, appends metrics to `metrics.jsonl` and TensorBoard scalars
beside it (`EpochLog`), and prints one line per epoch."""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path


class EpochLog:
    """Per-epoch metrics of a run directory: one JSON line each in `metrics.jsonl`, and the numeric
    ones as TensorBoard scalars (step = epoch) in an event file beside it, so that
    `tensorboard --logdir RUN` shows the curves."""

    def __init__(self, out_dir):
        self.out = Path(out_dir)
        self._writer = None

    def write(self, metrics: dict) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")
        if self._writer is None:
            self._writer = EventFileWriter(str(self.out))
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in sorted(metrics.items())
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch" and math.isfinite(v)]
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(metrics.get("epoch", 0)),
                                               summary=summary_pb2.Summary(value=values)))
        self._writer.flush()


class LocalReporter:
    def __init__(self, out_dir, stream=sys.stdout):
        self.out = Path(out_dir)
        self.stream = stream
        self.log = EpochLog(out_dir)

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if checkpoint is not None:
            if metrics.get("is_best"):
                _replace(self.out / "best", checkpoint, copy=True)
            _replace(self.out / "last", checkpoint, copy=False)
        self.log.write(metrics)
        if self.stream is not None:
            parts = " ".join(f"{k[6:] if k.startswith('train_') else k}={metrics[k]:.4g}"
                             for k in ("train_loss", "val_loss", "probe_score", "rankme") if k in metrics)
            print(f"epoch {metrics['epoch']}: {parts} ({metrics['epoch_seconds']:.1f} s)"
                  + (" *best" if metrics.get("is_best") else ""), file=self.stream, flush=True)


def _replace(target: Path, source: Path, copy: bool) -> None:
    """Put `source` at `target` so that a crash leaves either the old or the new one whole."""
    staging = target.with_name(f".{target.name}.new")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        if copy:
            _copy_tree(source, staging)
        else:
            shutil.move(str(source), staging)
    except BaseException:  # a full disk midway: no half-copied staging left in the run directory
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)


def _copy_tree(source: Path, target: Path) -> None:
    """shutil.copytree, but the first failed copy raises its own OSError (a full disk: ENOSPC, which
    the CLI reports as one line) instead of copytree's shutil.Error that collects them as text."""
    for dirpath, _, filenames in os.walk(source):
        rel = Path(dirpath).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            shutil.copy2(Path(dirpath) / name, target / rel / name)
