"""One sweep stage on Ray Tune: OptunaSearch (TPE) + ASHA over the one training loop.

A one-worker trial, on CPU or on the GPU share Ray assigned it, runs the training loop inline (no
Ray Train start-up: 12-25 s on a 2-core machine, 17 s on an H200 node) and reports through
`ray.tune.report`; only a trial of more than one worker drives a Ray Train TorchTrainer. Each
finished trial's best checkpoint is pushed to the pool of evaluation actors
(evaluation/actor.py: EvaluatorPool) from `Callback.on_trial_complete` (it fires for
early-stopped trials too).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from .. import storage
from ..evaluation import leaderboard
from ..evaluation.actor import EvaluatorPool
from ..evaluation.trial import Selection, TrialRecord
from ..training.loop import Runtime, resolve_device, train
from . import cost as cost_meter, optuna_storage, trackers as tracking, warm_start
from .repeats import run_repeated
from .space import StageSpace
from .tensorboard import CurvesOnly

# Tune and TensorBoard want flat scalar metrics.
_REPORTED_KINDS = (int, float)


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a stage shares (passed with tune.with_parameters)."""

    stage: StageSpace  # with its selection metric resolved
    fixed: dict  # data path, teacher, threads: set by the pipeline, not swept
    cpus_per_trial: float = 1.0
    workers: int = 1  # > 1: the trial drives a TorchTrainer of that many DDP workers
    gpus_per_worker: float = 0.0  # one worker: the inline trial's own GPU share
    cpus_per_worker: float = 0.5
    train_storage: str = ""  # where those Train runs keep their checkpoints (a path or a URI)

    @property
    def distributed(self) -> bool:
        """Ray Train only for more than one worker: a one-worker GPU trial runs the loop inline on
        the GPU Ray assigned to the trial (CUDA_VISIBLE_DEVICES), as a CPU trial does."""
        return self.workers > 1

    def resources(self) -> dict:
        """What the trial's own process asks Ray for (sweep/resources.py's Plan says the same)."""
        if self.distributed:  # its process only drives the TorchTrainer; the workers hold the rest
            return {"cpu": 0.5}
        return {"cpu": self.cpus_per_trial, **({"gpu": self.gpus_per_worker} if self.gpus_per_worker > 0 else {})}


class TuneReporter:
    """Reporter for the training loop inside a Tune trial. Adds the Ray node the trial ran on.
    Non-finite values are left out, except the stage's metric: Tune needs it in every result, and
    a NaN there ranks the trial last rather than failing it. With a `cost` (sweep.cost) it measures
    the trial's cost at its first checkpoint and reports it with every result from then on."""

    def __init__(self, metric: str, cost: str = "", data_path: str = "", device="cpu"):
        self.node_id = ray.get_runtime_context().get_node_id()
        self.metric = metric
        self.cost, self.data_path, self.device = cost, data_path, device
        self.cost_value: float | None = None

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        flat = {k: (float(v) if not isinstance(v, bool) else int(v)) for k, v in metrics.items()
                if isinstance(v, _REPORTED_KINDS) and (not isinstance(v, float) or math.isfinite(v) or k == self.metric)}
        flat["node_id"] = self.node_id
        if self.cost and self.cost_value is None and checkpoint is not None:
            self.cost_value = cost_meter.measure(self.cost, checkpoint, self.data_path, self.device)
        if self.cost_value is not None:
            flat[cost_meter.COST_METRICS[self.cost]] = self.cost_value
        if checkpoint is not None:
            tune.report(flat, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))
        else:
            tune.report(flat)


def run_trial(sampled: dict, settings: TrialSettings) -> None:
    """The Tune function trainable."""
    cfg = settings.stage.config(sampled, settings.fixed)
    if settings.distributed:
        # Train V2 inside a Tune trial: the workers' reports reach Tune through
        # TuneReportCallback (rank 0's metrics plus a checkpoint_path metric).
        from ray.tune.integration.ray_train import TuneReportCallback

        from ..training.ray_train import run_distributed

        run_distributed(cfg, settings.workers, settings.gpus_per_worker, settings.train_storage,
                        name=tune.get_context().get_trial_id(), cpus_per_worker=settings.cpus_per_worker,
                        callbacks=[TuneReportCallback()])
        return
    sweep = settings.stage.sweep
    runtime = Runtime(device=resolve_device(cfg.train.device))
    reporter = TuneReporter(sweep.reported_metric, sweep.cost, cfg.data.path, runtime.device)
    checkpoint = tune.get_checkpoint()  # set when Tune restores an interrupted trial
    if checkpoint is None:
        _train(cfg, reporter, runtime, sweep, None)
        return
    # The checkpoint in place on local or shared storage (a temporary copy, removed on exit, only
    # where it lives elsewhere): restarts leave nothing behind.
    with checkpoint.as_directory() as resume:
        _train(cfg, reporter, runtime, sweep, resume)


def _train(cfg, reporter: TuneReporter, runtime: Runtime, sweep, resume) -> None:
    """One training run, or with sweep.repeats its seeds in lockstep (sweep/repeats.py)."""
    if sweep.repeats <= 1:
        train(cfg, reporter, runtime, resume=resume)
        return
    cfgs = [cfg.replace(**{"train.seed": cfg.train.seed + k}) for k in range(sweep.repeats)]
    run_repeated(lambda c, r, res: train(c, r, runtime, resume=res), cfgs, reporter.report, sweep.base_metric,
                 sweep.mode, resume=Path(resume) if resume else None)


@dataclass(frozen=True)
class StageScoring:
    """What every trial of a stage tells the evaluation actors besides its own figures: the rows'
    stage label and method, the config keys that are its params, the stage's metric and mode (which
    kept checkpoint, and its in-trial selection figures), and the trial a re-seed repeats."""

    stage: str
    method: str
    swept: tuple[str, ...]
    metric: str
    mode: str
    reseed_of: str = ""
    out: str = ""  # the sweep directory, to name a trial's directory as a location any process opens

    def record(self, trial_id: str, config: dict, found: tuple[str, dict] | None = None,
               trial_path: str = "") -> TrialRecord:
        """The record of one finished trial: `found` is its kept (checkpoint location, metrics),
        None for a trial that errored; `trial_path` its directory as Tune reports it."""
        path, metrics = found if found is not None else ("", {})
        return TrialRecord(trial_id=trial_id, stage=self.stage, method=self.method, checkpoint=path,
                           selection=selection_of(metrics, self.metric, self.mode) if found is not None else Selection(),
                           params={k: config[k] for k in self.swept if k in config},
                           seed=int(config.get("train.seed", 0)), reseed_of=self.reseed_of,
                           trial_dir=in_store(self.out, trial_path) if trial_path else "")


def selection_of(metrics: dict, metric: str, mode: str) -> Selection:
    """The in-trial figures at a kept checkpoint, from the metrics reported with it."""
    def number(key):
        try:
            return float(metrics.get(key))
        except (TypeError, ValueError):
            return math.nan

    extras = {}
    base = metric.removesuffix("_robust")
    if base != metric:  # a trial of several seeds (sweep/repeats.py): their mean and spread
        extras.update(selection_mean=number(f"{base}_mean"), selection_std=number(f"{base}_std"),
                      repeats=number("repeats"))
    for cost_metric in cost_meter.COST_METRICS.values():
        if cost_metric in metrics:  # a multi-objective stage's second objective
            extras.update(cost_metric=cost_metric, cost_value=number(cost_metric))
    return Selection(selection_metric=metric, selection_mode=mode, selection_value=number(metric),
                     val_loss=number("val_loss"), **extras)


class ScoreOnComplete(tune.Callback):
    """Hands each completed trial's kept checkpoint to the pool of evaluation actors, without
    waiting. The actors are looked up by name, so a callback restored with the experiment still
    finds them."""

    def __init__(self, actor_name, scoring: StageScoring):
        self.actor_name = [actor_name] if isinstance(actor_name, str) else list(actor_name)  # the pool's names
        self.scoring = scoring

    def __setstate__(self, state: dict) -> None:
        """Tune restores a stage's callbacks from its saved experiment: one an older driver saved
        holds the stage's figures as loose attributes (its resumed sweep still scores)."""
        if "scoring" not in state:
            state = {"actor_name": state["actor_name"], "scoring": StageScoring(
                state["stage"], state["method"], tuple(state["swept"]), state["metric"], state["mode"],
                state.get("reseed_of", ""), state.get("out", ""))}
        self.__dict__.update(state)

    def on_trial_complete(self, iteration, trials, trial, **info):
        found = kept_checkpoint(trial.run_metadata.checkpoint_manager.best_checkpoint_result)
        if found is None and trial.local_path:  # a multi-worker trial: checkpoints live in its Train run
            found = best_reported(_read_results(Path(trial.local_path) / "result.json"), self.scoring.metric,
                                  self.scoring.mode, self.scoring.out)
        if found is not None:
            # the storage dir (local_path is a staging copy), as a location the actor can open
            EvaluatorPool.shared(self.actor_name).score(
                self.scoring.record(trial.trial_id, trial.config, found, trial.path or ""))


def in_store(out: str, path: str) -> str:
    """A path as Tune reports it (inside the sweep's storage file system: `bucket/...` on object
    storage) -> a location any process can open (`s3://bucket/...`)."""
    return storage.uri_of(storage.resolve(out)[0], path)  # a local path comes back as it is


def kept_checkpoint(result):
    """(location, metrics) of the checkpoint Tune kept for a trial (the best by the stage's metric), or None."""
    if result is None or result.checkpoint is None:
        return None
    return storage.uri_of(result.checkpoint.filesystem, result.checkpoint.path), dict(result.metrics)


def _score_key(metric: str, mode: str):
    """Sort key: best first, NaN and missing last."""
    def key(metrics: dict) -> float:
        try:
            value = float(metrics.get(metric))
        except (TypeError, ValueError):
            return math.inf
        if not math.isfinite(value):
            return math.inf
        return -value if mode == "max" else value

    return key


def best_reported(rows, metric: str, mode: str, out: str = "") -> tuple[str, dict] | None:
    """(checkpoint location, metrics) of the best reported epoch, by the stage's metric, that carried
    a checkpoint (a multi-worker trial reports its checkpoints as a checkpoint_path metric)."""
    with_ckpt = [r for r in rows if isinstance(r.get("checkpoint_path"), str)]
    if not with_ckpt:
        return None
    best = min(with_ckpt, key=_score_key(metric, mode))
    return in_store(out, best["checkpoint_path"]), best


def _read_results(path: Path) -> list[dict]:
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class StageJob:
    """What one stage is: its Tune experiment's name (`<out>/<name>`), its space, the config keys
    the pipeline sets for every trial (data path, teacher, threads), and how its rows are labelled
    (`row_stage`, default the name; `reseed_of`: the trial a re-seed repeats)."""

    name: str
    stage: StageSpace  # with its selection metric resolved
    fixed: dict
    row_stage: str = ""
    reseed_of: str = ""

    @property
    def label(self) -> str:
        return self.row_stage or self.name


@dataclass(frozen=True)
class StageOutput:
    """Where a stage writes: the sweep directory (a path or an object-store URI, through
    storage.ray_storage), whether to continue the experiment found there, and the trackers that
    get its curves and downstream scores (mlflow, wandb: sweep/trackers.py)."""

    out: str
    resume: bool = False
    trackers: tuple = ()


@dataclass(frozen=True)
class TrialResources:
    """How a stage's trials are sized (sweep/resources.py's Plan): a one-worker trial's own CPUs
    and GPU share, or the DDP workers of a multi-worker one, and how many trials run at once."""

    cpus_per_trial: float = 1.0
    max_concurrent: int = 1
    workers: int = 1
    gpus_per_worker: float = 0.0


@dataclass(frozen=True)
class StageSearch:
    """What changes the stage's own search: `trials` instead of the space's count; `param_space`
    instead of the search (one config re-run with other seeds); `warm`, an earlier sweep's configs
    and trials that seed the search (a warm_start.WarmStage); `time_budget_s`, where the stage
    stops with what it has (the sweep's --budget)."""

    trials: int | None = None
    param_space: dict | None = None
    warm: object = None
    time_budget_s: float | None = None


def run_stage(job: StageJob, output: StageOutput, pool: EvaluatorPool, resources: TrialResources,
              search: StageSearch = StageSearch()) -> list[dict]:
    """Run (or resume) one stage's Tune experiment and wait until every completed trial is on the
    leaderboard, scored by `pool` (the sweep's evaluation actors). -> the stage's leaderboard rows
    (errored and failed ones included: see leaderboard.is_ok). The search's Optuna study is kept
    in the sweep directory (on object storage: in storage.driver_dir; sweep/optuna_storage.py)."""
    stage, out = job.stage, str(output.out)
    settings = TrialSettings(stage, dict(job.fixed), resources.cpus_per_trial, resources.workers,
                             resources.gpus_per_worker, train_storage=storage.join(out, f"{job.name}_train"))
    scoring = StageScoring(job.label, stage.method,
                           (*stage.params, *(["train.seed"] if search.param_space else [])),
                           stage.sweep.reported_metric, stage.sweep.mode, job.reseed_of, out)
    tuner = _tuner(job, output, settings, resources, search, ScoreOnComplete(pool.names, scoring))
    rows = _gather(_score_all(tuner.fit(), pool, scoring))
    leaderboard.write_snapshot(out)  # every row of the stage is written: leaderboard.parquet holds them all
    optuna_storage.close_stale_trials(out, job.name)
    tracking.log_downstream(output.trackers, out, job.label, [r for r in rows if leaderboard.is_ok(r)])
    return rows


def _tuner(job: StageJob, output: StageOutput, settings: TrialSettings, resources: TrialResources,
           search: StageSearch, callback: ScoreOnComplete) -> tune.Tuner:
    """The stage's Tuner: restored where a resumed stage saved its state, else a fresh one."""
    stage, out, name = job.stage, str(output.out), job.name
    metric, mode = stage.sweep.reported_metric, stage.sweep.mode
    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=settings), settings.resources())
    where = storage.ray_storage(out)
    experiment = storage.join(out, name)
    fs = {"storage_filesystem": where["storage_filesystem"]} if "storage_filesystem" in where else {}
    restore_at = storage.resolve(experiment)[1] if fs else experiment
    if output.resume and tune.Tuner.can_restore(restore_at, **fs):
        return tune.Tuner.restore(restore_at, trainable=trainable, resume_unfinished=True, resume_errored=True, **fs)
    if storage.is_dir(experiment):
        storage.delete(experiment)  # a stage interrupted before Tune saved any state
        optuna_storage.delete_study(out, name)  # and the trials it had asked for
    sweep = stage.sweep
    # Inline trials all ask for the same resources, so one trial process can run the next trial:
    # that saves a process start and the torch import per trial (seconds on a small machine).
    common = dict(metric=metric, mode=mode, max_concurrent_trials=resources.max_concurrent,
                  trial_dirname_creator=_trial_dirname, reuse_actors=not settings.distributed)
    if search.param_space is None:
        scheduler = (tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=sweep.epochs,
                                                   grace_period=sweep.grace_period,
                                                   reduction_factor=sweep.reduction_factor)
                     if sweep.scheduler == "asha" else None)
        # A multi-objective stage (sweep.cost): the searcher optimises quality and cost; Tune's
        # own metric, which ASHA and the kept checkpoint use, stays the quality objective alone
        # (the cost is fixed by the architecture, so it cannot change over a trial's epochs).
        warm = search.warm
        if warm is not None:
            warm_start.seed_study(optuna_storage.study_storage(out), name, stage, warm)
        searcher = stage.searcher(storage=optuna_storage.study_storage(out), study_name=name,
                                  points_to_evaluate=warm.points if warm is not None else None)
        optuna_storage.name_objective(out, name, stage.sweep.objectives[0])
        tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                      num_samples=search.trials or sweep.trials, time_budget_s=search.time_budget_s,
                                      **common)
    else:
        tune_config = tune.TuneConfig(num_samples=1, **common)
    run_config = tune.RunConfig(
        name=name, **where, verbose=1,
        callbacks=[callback, CurvesOnly(), *tracking.callbacks(output.trackers, out, job.label)],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric,
                                                checkpoint_score_order=mode),
        failure_config=tune.FailureConfig(max_failures=1),
    )
    return tune.Tuner(trainable, param_space=search.param_space or {}, tune_config=tune_config, run_config=run_config)


def _score_all(grid, pool: EvaluatorPool, scoring: StageScoring) -> list:
    """Every completed trial is (re)submitted: the callback already did so while the driver ran,
    but a driver killed in between would have lost those calls. The pool sends each to the actor
    it sent the trial to before, which skips scored trials and runs calls in order, so these
    refs resolve once the trial is scored. -> the refs."""
    refs = []
    for result in grid:
        trial_id = result.metrics.get("trial_id") or storage.name(result.path)
        if result.error is not None:  # listed with its reason (the report shows it), never ranked
            refs.append(pool.record_error(scoring.record(trial_id, result.config), leaderboard.reason(result.error)))
            continue
        kept = sorted(result.best_checkpoints or [], key=lambda cm: _score_key(scoring.metric, scoring.mode)(cm[1]))
        found = (storage.uri_of(kept[0][0].filesystem, kept[0][0].path), dict(kept[0][1])) if kept else None
        if found is None and result.metrics_dataframe is not None:
            found = best_reported(result.metrics_dataframe.to_dict("records"), scoring.metric, scoring.mode,
                                  scoring.out)
        if found is not None:
            refs.append(pool.score(scoring.record(trial_id, result.config, found, result.path)))
    return refs


def _gather(refs) -> list[dict]:
    """The actor's answers; a call whose scoring killed the actor's process on every retry is left
    out (its trial has no row; a resumed sweep scores it again) rather than ending the stage."""
    rows = []
    for ref in refs:
        try:
            rows.append(ray.get(ref))
        except ray.exceptions.RayActorError as e:
            print(f"scoring a trial failed: the evaluation actor died on every retry ({leaderboard.reason(e)})",
                  flush=True)
    return rows


def _trial_dirname(trial) -> str:
    return trial.trial_id
