"""The MLflow tracker's Tune callback, in a module of its own so that only a sweep run with
`--tracker mlflow` imports MLflow (sweep/trackers.py)."""
from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback


class TrialRuns(MLflowLoggerCallback):
    """Tags each run with its trial id, by which the downstream scores find it. (Module level:
    Tune pickles its callbacks with the experiment state for --resume.)"""

    def log_trial_start(self, trial):
        self.tags = {**(self.tags or {}), "trial_id": trial.trial_id}
        super().log_trial_start(trial)
