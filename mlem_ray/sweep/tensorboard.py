"""TensorBoard for a sweep's trials: Tune's per-trial curves, without Tune's per-trial HParams.

Tune's TBXLoggerCallback writes an HParams session (and an experiment summary listing only that
trial's keys) when a trial ends, without the downstream scores that come later; the evaluation
actor writes one complete session per trial (evaluation/hparams.py). Both would make two rows per
trial, and the first experiment summary TensorBoard finds would fix the columns to one stage's
keys. Passing a TBXLoggerCallback subclass also stops Tune from adding its default one.
"""
from __future__ import annotations

from ray.tune.logger import TBXLoggerCallback


class CurvesOnly(TBXLoggerCallback):
    """Tune's TensorBoard logger, scalars only."""

    def _try_log_hparams(self, trial, result) -> None:
        return None
