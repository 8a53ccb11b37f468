"""Experiment trackers (`--tracker mlflow|wandb`): Ray Tune's own MLflowLoggerCallback and
WandbLoggerCallback, one tracker run per trial, plus the trial's downstream scores in that run.

The logger callbacks end a trial's run when the trial ends; the evaluation actor scores it later.
So once a stage's rows are all scored, the driver adds `downstream/<metric>` (and the in-trial
selection score at the kept checkpoint) to each trial's run: in MLflow by the run tagged with the
trial id, in W&B by resuming the run whose id Tune gave it (the trial id).

Both work offline: MLflow writes to a SQLite store in the sweep directory (`<sweep>/mlflow.db`) unless
MLFLOW_TRACKING_URI names a server; W&B runs in offline mode (`<sweep>/wandb`, upload later with
`wandb sync`) unless WANDB_MODE says otherwise. Both are optional extras
(`pip install mlem_ray[mlflow]`, `mlem_ray[wandb]`).
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

TRACKERS = ("mlflow", "wandb")


def __getattr__(name: str):
    """`TrialRuns` is defined in sweep/mlflow_runs.py, imported only when asked for: importing
    MLflow costs every trial process and driver 0.6 s here, tracker or not. Kept reachable here
    because a stage saved by an older version pickled it under this module's name."""
    if name == "TrialRuns":
        from .mlflow_runs import TrialRuns

        return TrialRuns
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def missing(names) -> str | None:
    """A one-line message when a requested tracker is unknown or not installed, else None."""
    for name in names:
        if name not in TRACKERS:
            return f"--tracker {name}: unknown tracker (choose from {', '.join(TRACKERS)})"
        if importlib.util.find_spec(name) is None:
            return f"--tracker {name}: {name} is not installed; pip install 'mlem_ray[{name}]'"
    return None


def _local(out) -> Path:
    """Where the trackers' local files go: the sweep dir, or for a sweep on object storage its
    storage.driver_dir (SQLite and W&B's offline runs need a local disk)."""
    from .. import storage

    where = storage.driver_dir(out)
    where.mkdir(parents=True, exist_ok=True)
    return where.resolve()


def _name(out) -> str:
    from .. import storage

    return storage.name(out)


def mlflow_uri(out: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store in the sweep directory (MLflow 3 refuses
    its old ./mlruns file store by default; SQLite is its recommended local backend)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{_local(out) / 'mlflow.db'}"


def experiment_name(out: Path, stage: str) -> str:
    """One tracker experiment (MLflow) or project group (W&B) per stage of a sweep."""
    return f"{_name(out)}-{stage}"


def callbacks(names, out: Path, stage: str) -> list:
    """Tune logger callbacks for one stage."""
    made = []
    if "mlflow" in names:
        from .mlflow_runs import TrialRuns

        made.append(TrialRuns(tracking_uri=mlflow_uri(out), experiment_name=experiment_name(out, stage),
                              tags={"stage": stage}))
    if "wandb" in names:
        from ray.air.integrations.wandb import WandbLoggerCallback

        os.environ.setdefault("WANDB_MODE", "offline")  # Ray's API-key check honours it
        made.append(WandbLoggerCallback(project=_name(out), group=stage, mode=os.environ["WANDB_MODE"],
                                        dir=str(_local(out))))
    return made


def _scores(row: dict) -> dict:
    metrics = {f"downstream/{k}": v for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("scored_at", "seed")}
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def log_downstream(names, out: Path, stage: str, rows: list[dict]) -> None:
    """Add each scored row's downstream metrics to its trial's tracker run (once: a resumed sweep
    finds them there and skips)."""
    if "mlflow" in names and rows:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=mlflow_uri(out))
        experiment = client.get_experiment_by_name(experiment_name(out, stage))
        for row in rows if experiment else []:
            runs = client.search_runs([experiment.experiment_id], f"tags.trial_id = '{row['trial_id']}'")
            for run in runs:
                if not any(k.startswith("downstream/") for k in run.data.metrics):
                    for key, value in _scores(row).items():
                        client.log_metric(run.info.run_id, key, value)
    if "wandb" in names and rows:
        import wandb

        for row in rows:
            run = wandb.init(id=row["trial_id"], project=_name(out), group=stage, resume="allow",
                             mode=os.environ.get("WANDB_MODE", "offline"), dir=str(_local(out)),
                             reinit="create_new")
            run.summary.update(_scores(row))
            run.finish()
