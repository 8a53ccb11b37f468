"""A plain local run's reporter: keeps `last/` (for --resume) and `best/` (lowest validation loss)
checkpoints in the run directory, appends metrics to `metrics.jsonl` and prints one line per epoch."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


class LocalReporter:
    def __init__(self, out_dir, stream=sys.stdout):
        self.out = Path(out_dir)
        self.stream = stream

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if checkpoint is not None:
            if metrics.get("is_best"):
                _replace(self.out / "best", checkpoint, copy=True)
            _replace(self.out / "last", checkpoint, copy=False)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")
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
    if copy:
        shutil.copytree(source, staging)
    else:
        shutil.move(str(source), staging)
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)
