"""Each stage's Optuna study, persisted in the sweep directory as one Optuna journal file.

OptunaSearch keeps its study in memory by default, inside Tune's pickled searcher state, where
neither `optuna.load_study` nor `optuna-dashboard` can reach it. Handing it a JournalStorage
(append-only, file-locked, no database server) puts every stage's study, named after the stage,
in `<sweep>/optuna.journal`::

    optuna-dashboard runs/demo/optuna.journal
    optuna.load_study(study_name="mlem", storage=study_storage("runs/demo"))

Tune pickles the searcher together with this storage object, which holds only the file path, so
a `--resume`d stage appends to the same study.
"""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

FILE = "optuna.journal"


def path(sweep_dir) -> Path:
    """The journal: in the sweep dir, or for a sweep on object storage in storage.driver_dir
    (a journal needs local file locks and appends; only the driver writes it)."""
    from .. import storage

    return storage.driver_dir(sweep_dir) / FILE


def study_storage(sweep_dir) -> JournalStorage:
    """The sweep's study storage (created on first use)."""
    return JournalStorage(JournalFileBackend(str(path(sweep_dir))))


def study_names(sweep_dir) -> list[str]:
    """The stages whose studies the sweep holds ([] when it holds none)."""
    if not path(sweep_dir).exists():
        return []
    return [s.study_name for s in optuna.get_all_study_summaries(study_storage(sweep_dir), include_best_trial=False)]


def name_objective(sweep_dir, study_name: str, metric: str | list[str]) -> None:
    """Name the study's objective(s) (OptunaSearch does not): optuna-dashboard and the report's plots
    label their axes with them; a warm start checks them (sweep/warm_start.py)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.load_study(study_name=study_name, storage=study_storage(sweep_dir)).set_metric_names([metric] if isinstance(metric, str) else list(metric))


def close_stale_trials(sweep_dir, study_name: str) -> int:
    """Mark as failed the study's trials still RUNNING once Tune has finished the stage: trials a
    killed driver had asked for but whose Tune state was never saved (a resumed stage asks anew).
    -> how many."""
    if study_name not in study_names(sweep_dir):
        return 0
    storage = study_storage(sweep_dir)
    study = optuna.load_study(study_name=study_name, storage=storage)
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


def delete_study(sweep_dir, study_name: str) -> None:
    """Forget a stage's study (its Tune experiment is being started over)."""
    if study_name in study_names(sweep_dir):
        optuna.delete_study(study_name=study_name, storage=study_storage(sweep_dir))
