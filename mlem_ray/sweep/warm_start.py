"""`mlem-ray sweep --warm-start SWEEP_DIR|JOURNAL`: an earlier sweep seeds the new one.

From a sweep directory: per stage, the earlier sweep's best configs (its ok leaderboard rows, not
re-seeds, by the downstream score, best first; at most ``BEST_POINTS``) are run first, in that
order (OptunaSearch's ``points_to_evaluate``, i.e. Optuna's ``enqueue_trial``), and when the
earlier study's objectives are the new stage's (same names, same number), the whole study too:
every completed trial of its ``optuna.journal`` is added to the new study before the first
suggestion, so TPE starts from the earlier observations. From a journal file: the whole study of
each stage of the same name, its best trial(s) enqueued first.

Compatible means: a stage of the new space with the same name as an earlier one has the same
method and the same swept keys, and every earlier value lies inside the new distribution. A stage
with no earlier counterpart starts cold; a source that matches no stage, or any stage that
differs, is refused with one line before anything is written.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from .. import storage
from ..errors import SweepError
from .space import SearchSpace, StageSpace

BEST_POINTS = 3


@dataclass
class WarmStage:
    """What seeds one stage: configs run first (best first) and earlier trials for the study."""

    points: list[dict] = field(default_factory=list)
    trials: list = field(default_factory=list)  # optuna FrozenTrials of the earlier study
    metric_names: list[str] | None = None  # the earlier study's objectives (None: not recorded)


def plan(source: str, stages: dict[str, StageSpace]) -> dict[str, WarmStage]:
    """Per stage of `stages` that the source can seed, what seeds it; refused (SweepError, one
    line) when the source is unreadable or incompatible."""
    where = f"--warm-start {source}"
    journal = _journal_of(source)
    if journal is None:
        raise SweepError(f"{where}: neither a sweep directory (no leaderboard.parquet or optuna.journal) "
                         "nor an Optuna journal file")
    studies = _studies(journal) if journal.exists() else {}
    is_sweep = not _is_journal_file(source)
    earlier_space = _earlier_space(source, where) if is_sweep else None
    out: dict[str, WarmStage] = {}
    for name, stage in stages.items():
        if is_sweep and earlier_space is not None and name in earlier_space.stages:
            _check_stage(where, name, earlier_space.stages[name], stage)
        warm = WarmStage()
        study = studies.get(name)
        if study is not None:
            done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
            for t in done:
                _check_point(where, name, stage, t.params)
            warm.trials, warm.metric_names = done, list(study.metric_names or []) or None
        if is_sweep:
            warm.points = _best_from_leaderboard(source, name, stage, where)
        elif study is not None:
            best = study.best_trials if len(study.directions) > 1 else ([study.best_trial] if warm.trials else [])
            warm.points = [dict(t.params) for t in best[:BEST_POINTS]]
        if warm.points or warm.trials:
            out[name] = warm
    if not out:
        raise SweepError(f"{where}: no stage of it matches this search space's stages "
                         f"({', '.join(stages)}) with any completed trial")
    return out


def seed_study(study_storage, study_name: str, stage: StageSpace, warm: WarmStage) -> int:
    """Add the earlier completed trials to the new stage's study (created here with the stage's
    directions; OptunaSearch then loads it) when their objectives are the stage's. -> how many."""
    metrics, modes = stage.sweep.objectives
    if not warm.trials or warm.metric_names != metrics:
        return 0
    space = stage.optuna_space()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(storage=study_storage, study_name=study_name, load_if_exists=True,
                                    directions=["maximize" if m == "max" else "minimize" for m in modes])
        study.set_metric_names(metrics)
        study.add_trials([optuna.trial.create_trial(params=dict(t.params), distributions=space, values=list(t.values),
                                                    state=optuna.trial.TrialState.COMPLETE) for t in warm.trials
                          if t.values is not None and len(t.values) == len(metrics)])
    return len(warm.trials)


# ---------------------------------------------------------------------------------------------


def _is_journal_file(source: str) -> bool:
    return not storage.is_uri(source) and Path(source).is_file()


def _journal_of(source: str) -> Path | None:
    from . import optuna_storage

    if _is_journal_file(source):
        return Path(source)
    if storage.is_uri(source) or Path(source).is_dir():
        if storage.exists(storage.join(source, "leaderboard.parquet")) or optuna_storage.path(source).exists():
            return optuna_storage.path(source)
    return None


def _studies(journal: Path) -> dict:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        st = JournalStorage(JournalFileBackend(str(journal)))
        names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
        return {n: optuna.load_study(study_name=n, storage=st) for n in names}
    except Exception as e:  # noqa: BLE001 (a damaged or foreign file: one line)
        raise SweepError(f"--warm-start {journal}: not a readable Optuna journal ({type(e).__name__})") from None


def _earlier_space(source: str, where: str) -> SearchSpace | None:
    path = storage.join(source, "space.yaml")
    if not storage.exists(path):
        return None
    try:
        return SearchSpace.from_text(storage.read_text(path), path)
    except ValueError as e:
        raise SweepError(f"{where}: its space.yaml no longer loads ({str(e).splitlines()[0]})") from None


def _check_stage(where: str, name: str, before: StageSpace, now: StageSpace) -> None:
    if before.method != now.method:
        raise SweepError(f"{where}: stage {name} was {before.method}, is now {now.method}: incompatible space")
    if set(before.params) != set(now.params):
        diff = sorted(set(before.params) ^ set(now.params))[0]
        side = "no longer" if diff in before.params else "now"
        raise SweepError(f"{where}: stage {name} {side} sweeps {diff}: incompatible space (same swept keys needed)")


def _check_point(where: str, name: str, stage: StageSpace, params: dict) -> None:
    if set(params) != set(stage.params):
        diff = sorted(set(params) ^ set(stage.params))[0]
        raise SweepError(f"{where}: stage {name}: its trials and this space differ in {diff}: incompatible space")
    for key, spec in stage.params.items():
        dist = spec.distribution()
        try:
            inside = dist._contains(dist.to_internal_repr(params[key]))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            raise SweepError(f"{where}: stage {name}: its {key} = {params[key]!r} lies outside this space's "
                             "range: incompatible space")


def _best_from_leaderboard(source: str, name: str, stage: StageSpace, where: str) -> list[dict]:
    from ..evaluation import leaderboard

    points = []
    for row in leaderboard.ranked(leaderboard.originals(leaderboard.read_rows(source), name), "primary")[:BEST_POINTS]:
        params = {k: v for k, v in leaderboard.parse_params(row["params"]).items() if k in stage.params}
        _check_point(where, name, stage, params)
        points.append({k: stage.params[k].cast(v) for k, v in params.items()})
    return points
