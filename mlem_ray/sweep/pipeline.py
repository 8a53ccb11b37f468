"""The main job: the two-stage MLEM sweep (or a one-stage sweep), end to end.

Every stage ranks its trials by the in-trial selection score (training/selection.py: a linear
probe on a fixed subset of the labelled training pool, or RankMe without labels). Stage 1 sweeps
CoLES teachers; the evaluation actor scores every finished trial downstream; among the stage's
finalists (best in-trial score) the best downstream score becomes the teacher. Stage 2 sweeps
MLEM against it. Comparison stages (generative, hybrid, ...) are swept at the same budget.

Sweep directory layout (`--out`, a path or an object-store URI such as s3://bucket/sweep; every
file goes through mlem_ray/storage.py, so a cloud cluster needs no shared disk):
  sweep.json              the sweep's settings (so `--resume` needs only `--out`)
  space.yaml              the search space used
  data/                   the generated Pendulum set when no --data was given
  <stage>/<trial_id>/     Tune trials: TensorBoard curves, checkpoints; hparams/ its HParams session
  optuna.journal          every stage's Optuna study (sweep/optuna_storage.py)
  mlflow.db, wandb/       with --tracker mlflow|wandb (sweep/trackers.py)
  leaderboard.parquet     one row per scored trial (the evaluation actor's)
  tensorboard_leaderboard/
  teacher.json            the chosen teacher (two-stage sweeps; from the Pareto front of a
                          multi-objective stage, sweep/pareto.py)
  budget.json             with --budget: each stage's measured step time and chosen sizes (sweep/budget.py)

--warm-start seeds each compatible stage from an earlier sweep (sweep/warm_start.py); --budget sizes
the stages for a compute budget and stops each at its share (sweep/budget.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import storage
from ..errors import DataError, SweepError  # noqa: F401  (SweepError re-exported)
from ..evaluation import leaderboard
from . import budget, pareto, warm_start
from .lock import sweep_lock
from .space import SearchSpace, StageSpace, load_space, space_text

# Each epoch checkpoints, so Tune's snapshot-frequency warning would fire on every small trial
# (set before ray.tune is imported).
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

DEFAULT_SPACE = "quick"
DEMO_SEQUENCES = 2000


def location(text: str) -> str:
    """A sweep or data location as stored in sweep.json: a URI as given, a path made absolute."""
    return storage.absolute(text)


@dataclass
class SweepJob:
    """One sweep's settings as given on the command line, saved as sweep.json (so --resume needs
    only --out)."""

    out: str
    data: str = ""
    space: str = ""
    trials: int = 0  # 0: each stage's own
    methods: list = field(default_factory=list)
    gpus_per_worker: float = 0.0
    workers_per_trial: int = 1
    cpus_per_trial: float = 1.0
    folds: int = 5  # the evaluation actors' probes: CV folds and the tree probe's boosting iterations
    tree_iters: int = 300
    sequences: int = DEMO_SEQUENCES
    trackers: list = field(default_factory=list)  # mlflow, wandb (sweep/trackers.py)
    eval_gpus: float = 0.0  # GPU share of each evaluation actor (it embeds on the GPU when > 0)
    eval_actors: int = 0  # evaluation actors; 0: what the CPUs left after the trials allow (sweep/resources.py)
    trials_per_gpu: str = ""  # K one-worker trials packed on each GPU, "auto", or "" (no packing)
    warm_start: str = ""  # an earlier sweep dir or Optuna journal that seeds the search (sweep/warm_start.py)
    budget: str = ""  # a compute budget (2h, 90m, 1.5gpu-h) that sizes the stages (sweep/budget.py)


def check_locations(out: str, data: str) -> None:
    """The driver's own start-of-sweep check, before anything is written: --out (a URI) takes a
    probe object and gives it back byte-exact, and --data is a prepared data set it can read.
    Fails in seconds with one line: wrong bucket, no credentials, unreachable endpoint."""
    try:
        storage.check_writable(out)
    except storage.StorageError as e:
        raise SweepError(f"--out {e}") from None
    if data:
        try:
            found = storage.exists(storage.join(data, "schema.json"))
        except (OSError, storage.StorageError) as e:
            raise DataError(f"--data {data}: cannot read it ({storage.explain(e)})") from None
        if not found:
            raise DataError(f"--data {data} is not a prepared data set (no schema.json); create it with `mlem-ray data ...`")


def _resolve(settings: SweepJob, resume: bool) -> SweepJob:
    out = location(settings.out)
    state = storage.join(out, "sweep.json")
    check_locations(out, "")  # a bad bucket or endpoint is named as such, not as "no sweep there"
    if resume:
        if not storage.exists(state):
            raise SweepError(f"--resume: {out} holds no sweep (no sweep.json); start one with mlem-ray sweep --out {out}")
        saved = SweepJob(**json.loads(storage.read_text(state)))
        # The space as copied at the start: the original path may be gone (a job's working dir).
        return replace(saved, out=out, space=storage.join(out, "space.yaml"))
    if storage.exists(state):
        raise SweepError(f"--out {out} already holds a sweep; pass --resume to continue it or choose another --out")
    space = settings.space or DEFAULT_SPACE
    load_space(space)  # refuse a bad file or an unknown name before anything is written
    if Path(space).is_file():  # a local file, recorded absolute (a URI or a shipped name is kept)
        space = storage.absolute(space)
    data = location(settings.data) if settings.data else ""
    check_locations("", data)
    settings = replace(settings, out=out, space=space, data=data)
    if settings.warm_start:  # an incompatible earlier sweep is refused before anything is written
        warm = location(settings.warm_start)
        warm_start.plan(warm, _stages(load_space(space), settings))
        settings = replace(settings, warm_start=warm)
    _check_repeats(_stages(load_space(space), settings), settings)
    if settings.budget and budget.parse(settings.budget).gpu and not settings.gpus_per_worker:
        raise SweepError(f"--budget {settings.budget}: GPU-hours need trials on GPUs (--gpus-per-worker); "
                         "give hours instead, e.g. 2h")
    return settings


def _check_repeats(stages: dict[str, StageSpace], settings: SweepJob) -> None:
    """Several seeds per trial run inline (sweep/repeats.py), not as Ray Train runs."""
    if settings.workers_per_trial > 1 or settings.gpus_per_worker:
        for name, stage in stages.items():
            if stage.sweep.repeats > 1:
                raise SweepError(f"stage {name}: sweep.repeats > 1 runs its seeds inside one trial process; "
                                 "it does not combine with --workers-per-trial > 1 or --gpus-per-worker")


def _prepare_out(settings: SweepJob) -> str:
    out = settings.out
    storage.ensure_dir(out)
    if not storage.exists(storage.join(out, "space.yaml")):
        storage.write_text(storage.join(out, "space.yaml"), space_text(settings.space))
    if not settings.data:
        data = storage.join(out, "data")
        if not storage.exists(storage.join(data, "schema.json")):
            print(f"generating Pendulum ({settings.sequences} sequences) in {data}", flush=True)
            # schema.json last: it marks a complete data set (an interrupted upload is redone)
            with storage.writable_dir(data, last="schema.json", prefix="mlem_ray_data_") as local:
                _generate_pendulum(local, settings.sequences)
        settings = replace(settings, data=data)
    storage.write_text(storage.join(out, "sweep.json"), json.dumps(asdict(settings), indent=1))
    return out


def _generate_pendulum(path: Path, sequences: int) -> None:
    from ..data import pendulum, prepare, write_prepared

    events, targets = pendulum.generate(sequences, seed=0)
    spec = replace(pendulum.INGEST_SPEC, source=f"pendulum(sequences={sequences}, seed=0)")
    write_prepared(path, *prepare(events, spec, targets), overwrite=True)


def _stages(space: SearchSpace, settings: SweepJob) -> dict[str, StageSpace]:
    """The stages to run, in order: the file's, plus a comparison stage per --methods entry
    (that method's own space file, at the MLEM stage's budget and shared constants)."""
    stages = dict(space.stages)
    if settings.methods:
        budget_from = stages.get("mlem") or next(iter(stages.values()))
        for method in settings.methods:
            key = f"compare_{method}"
            if key in stages or method in stages:
                continue
            from .space import shipped

            if method not in shipped():
                raise SweepError(f"--methods {method}: no shipped search space {method}.yaml "
                                 f"(shipped: {', '.join(shipped())})")
            own = next(iter(load_space(method).stages.values()))
            shared = {k: v for k, v in budget_from.constants.items() if k not in own.params and not k.startswith("objective.")}
            stages[key] = replace(own, sweep=replace(own.sweep, trials=budget_from.sweep.trials,
                                                     epochs=budget_from.sweep.epochs,
                                                     grace_period=min(own.sweep.grace_period, budget_from.sweep.epochs)),
                                  constants={**own.constants, **shared})
    return stages


def _resolve_metrics(stages: dict[str, StageSpace], data: str) -> dict[str, StageSpace]:
    """Each stage with its selection metric chosen for this data set: the file's, else probe when
    the data has labelled training sequences, else rankme."""
    from ..data.prepared import EventSequences
    from ..training.selection import MIN_LABELLED, default_metric

    seqs = EventSequences.open(data)
    default = default_metric(seqs)
    for name, stage in stages.items():
        if stage.sweep.selection == "probe" and default != "probe":
            raise SweepError(f"stage {name}: sweep.selection probe needs >= {MIN_LABELLED} labelled training sequences; "
                             f"{data} has {len(seqs.labelled('train', 'val'))}: use selection rankme")
    return {name: stage.resolved(default) for name, stage in stages.items()}


def _worker_env(*locations) -> dict | None:
    """storage.worker_env_for(locations), less what a `ray job submit` runtime env already sets:
    Ray refuses to merge a job's runtime env with a ray.init one that names the same variable."""
    env = storage.worker_env_for(*locations)
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if injected:
        from ray.job_config import JobConfig

        taken = (JobConfig.from_json(json.loads(injected)).runtime_env or {}).get("env_vars") or {}
        env = {k: v for k, v in env.items() if k not in taken} if env is not None else None
    return env


@dataclass
class _Session:
    """What the stages of one sweep share once Ray is up: the evaluation actors and the account
    of the cluster's resources (sweep/resources.py) that sized them and sizes the trials."""

    out: str  # a path or a URI
    settings: SweepJob
    pool: object  # evaluation.actor.EvaluatorPool
    plan: object  # sweep.resources.Plan

    def fixed(self, name: str, two_stage: bool, stage: StageSpace | None = None) -> dict:
        fixed = {"data.path": self.settings.data, "train.threads": self.plan.threads}
        # Trials that hold GPUs train on them, unless the space file pins train.device itself.
        if self.plan.uses_gpu and not (stage is not None and "train.device" in stage.constants):
            fixed["train.device"] = "cuda"
        if name == "mlem" and two_stage:
            fixed["objective.teacher"] = json.loads(storage.read_text(storage.join(self.out, "teacher.json")))["checkpoint"]
        return fixed

    def max_concurrent(self, stage: StageSpace) -> int:
        return stage.sweep.max_concurrent or self.plan.max_concurrent

    @property
    def cpus_per_trial(self) -> float:
        return self.plan.trial_cpus if self.plan.inline else self.settings.cpus_per_trial

    def resources(self, stage: StageSpace):
        """A stage's trial sizes, from the plan (tuner.TrialResources)."""
        from .tuner import TrialResources

        gpus = self.plan.trial_gpus if self.plan.inline else self.plan.worker_gpus
        return TrialResources(self.cpus_per_trial, self.max_concurrent(stage), self.plan.workers, gpus)

    def output(self, resume: bool):
        """Where every stage writes, and whether it continues what it finds (tuner.StageOutput)."""
        from .tuner import StageOutput

        return StageOutput(self.out, resume, tuple(self.settings.trackers))


def check_storage_reachable(out: str, nodes: list[dict], data: str = "", timeout_s: float = 60.0) -> None:
    """Every alive node must see the sweep directory and the data set: trials write checkpoints
    there and the evaluation actor reads them. A node that cannot (no shared storage, no
    credentials for the bucket, no route to the endpoint) is refused up front with one line
    instead of trials failing or hanging later. nodes: ray.nodes() entries of the alive nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = f"{os.getpid()}-{os.urandom(4).hex()}"
    probe = storage.join(out, f".storage_probe-{token}")
    storage.write_text(probe, token)

    @ray.remote(num_cpus=0)
    def problem(out: str, probe: str, token: str, data: str) -> str:
        """'' when this node sees the driver's probe, can write under out and read data."""
        from mlem_ray import storage as st

        try:
            if not st.exists(probe) or st.read_text(probe) != token:
                return "blind"
            st.check_writable(out, token=token)
            if data and not st.exists(st.join(data, "schema.json")):
                return f"cannot read --data {data}"
        except st.StorageError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 (the SDK's errors arrive as OSError and others)
            return f"{out}: {st.explain(e)}"
        return ""

    refs = {n["NodeID"]: problem.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(out, probe, token, data) for n in nodes}
    try:
        answers = dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s)))
    except ray.exceptions.GetTimeoutError:
        raise SweepError(f"could not check within {timeout_s:.0f} s that every Ray node sees --out {out}") from None
    except ray.exceptions.RayError as e:  # a node died, or its runtime env failed to set up
        raise SweepError(f"could not check that every Ray node sees --out {out}: {type(e).__name__}") from None
    finally:
        storage.delete(probe)
    blind = [n[:8] for n, why in answers.items() if why == "blind"]
    if blind:
        raise SweepError(f"--out {out} is not visible from Ray node(s) {', '.join(blind)}: on a multi-node cluster "
                         "--out must be shared storage (an object-store URI such as s3://bucket/sweep, or an NFS "
                         "mount at the same path on every node)")
    other = [(n[:8], why) for n, why in answers.items() if why]
    if other:
        raise SweepError(f"Ray node {other[0][0]}: {other[0][1]}")


def resource_request(settings: SweepJob, demand: int, trials_per_gpu: int | None = None):
    """The sweep flags as sweep/resources.py's Request. `trials_per_gpu` replaces the flag's K
    (`auto` sizes the actors for resources.AUTO_MAX_K until a stage measures its own)."""
    from .resources import AUTO_MAX_K, Request, parse_trials_per_gpu

    k = parse_trials_per_gpu(settings.trials_per_gpu) if trials_per_gpu is None else trials_per_gpu
    return Request(eval_actors=settings.eval_actors, eval_gpus=settings.eval_gpus,
                   trials_per_gpu=AUTO_MAX_K if k == "auto" else k, gpus_per_worker=settings.gpus_per_worker,
                   workers_per_trial=settings.workers_per_trial, cpus_per_trial=settings.cpus_per_trial,
                   demand=max(1, demand))


def _start(settings: SweepJob, address: str | None, demand: int = 1) -> _Session:
    """Ray up, the resources accounted for (refused before anything is written when they cannot
    fit), the sweep dir prepared, the evaluation actors started. `demand`: the most trials a
    stage asks to run at once."""
    import ray

    from ..evaluation.actor import get_or_create_pool
    from ..training.resources import ResourceError, connect
    from . import resources

    # Workers on other nodes reach the same object store as the driver (endpoint, region,
    # checksum settings; never secrets: each node has its own credential chain).
    connect(address, env_vars=_worker_env(settings.out, settings.data))
    cluster = resources.Cluster.from_ray()
    if resources.parse_trials_per_gpu(settings.trials_per_gpu) == "auto" and cluster.gpus <= 0:
        raise ResourceError("asked for --trials-per-gpu auto but the Ray cluster has 0 GPUs; drop the flag to train "
                            "on CPU or join a GPU cluster with --address")
    # Unplaceable actors or trials would wait forever: refused here, before anything is written.
    plan = resources.plan(cluster, resource_request(settings, demand))
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1:
        out = settings.out
        created = storage.ensure_dir(out)
        try:
            check_storage_reachable(out, alive, data=settings.data)
        except SweepError:
            if created:
                shutil.rmtree(out, ignore_errors=True)  # leave nothing behind a refused start
            raise
    out = _prepare_out(settings)
    settings = SweepJob(**json.loads(storage.read_text(storage.join(out, "sweep.json"))))
    pool = get_or_create_pool(out, settings.data, evaluator_name(out), plan.eval_actors, cpus=plan.actor_cpus,
                              gpus=plan.actor_gpus, folds=settings.folds,
                              tree_iters=settings.tree_iters)
    pool.warm_up()  # the data set opened and the baseline scored while the first trials start
    print(f"resources: {plan.describe()}", flush=True)
    return _Session(out, settings, pool, plan)


def _packing_plan(session: _Session, name: str, stage: StageSpace, fixed: dict, demand: int):
    """With --trials-per-gpu: the stage's plan once its largest config's peak GPU memory (and, for
    auto, the aggregate throughput of 1, 2, 4, ... of them side by side on one GPU) is measured
    (sweep/probe.py); a K that does not fit is refused. Without: the sweep's plan as it is."""
    from . import probe, resources

    asked = resources.parse_trials_per_gpu(session.settings.trials_per_gpu)
    if not asked:
        return session.plan
    overrides = probe.largest_config(stage, fixed)  # on the trials' device (fixed)
    # One GPU, less the average share the evaluation actors hold on each: what K trials get.
    plan, gpus = session.plan, resources.Cluster.from_ray().gpus
    share = 1.0 if not plan.actor_gpus else max(0.01, math.floor(100 * (1 - min(1.0, plan.eval_actors * plan.actor_gpus
                                                                                 / max(gpus, 1.0)))) / 100)
    first = probe.probe_on_gpu(overrides, stage.method, [1], gpus=share)[1]
    cluster = resources.Cluster.from_ray(gpu_memory_bytes=first["gpu_total_bytes"])
    measured = {1: first}
    if asked == "auto":
        ks = resources.auto_candidates(cluster, first["peak_bytes"])
        if len(ks) > 1:
            measured.update(probe.probe_on_gpu(overrides, stage.method, ks[1:], stop_gain=1.1, gpus=share))
        k = resources.choose_trials_per_gpu({k: m["aggregate_sequences_per_s"] for k, m in measured.items()})
    else:
        k = asked
    request = replace(resource_request(session.settings, demand, trials_per_gpu=k),
                      eval_actors=session.plan.eval_actors)
    stage_plan = resources.plan(cluster, request, trial_gpu_bytes=first["peak_bytes"])
    figures = {k: {"aggregate_sequences_per_s": m["aggregate_sequences_per_s"], "peak_bytes": m["peak_bytes"]}
               for k, m in measured.items()}
    storage.write_text(storage.join(session.out, f"gpu_probe_{name}.json"),
                       json.dumps({"trials_per_gpu": k, "asked": asked, "gpu_total_bytes": first["gpu_total_bytes"],
                                   "measured": figures}, indent=1))
    rates = ", ".join(f"K={k_}: {m['aggregate_sequences_per_s']:.0f} seq/s" for k_, m in measured.items())
    memory = (f"a trial peaks at {first['peak_bytes'] / 2**30:.2f} GiB of the GPU's {first['gpu_total_bytes'] / 2**30:.1f} GiB"
              if first["gpu_total_bytes"] else "no GPU memory measured (the space pins train.device)")
    print(f"stage {name}: {memory}; {rates}; {k} trials per GPU -> {stage_plan.describe()}", flush=True)
    return stage_plan


def _demand(stages: dict, settings: SweepJob) -> int:
    """The most trials any stage asks to run at once."""
    return max((s.sweep.max_concurrent or settings.trials or s.sweep.trials for s in stages.values()), default=1)


def evaluator_name(out) -> str:
    """The evaluation actor's name for the sweep in `out`: one actor per sweep dir, found again by
    a resumed driver."""
    return "evaluator-" + hashlib.sha1(location(str(out)).encode()).hexdigest()[:10]


def run_sweep(settings: SweepJob, address: str | None = None, resume: bool = False) -> dict:
    settings = _resolve(settings, resume)  # bad input fails here, before Ray and torch are imported
    with sweep_lock(settings.out):
        return _run_sweep(settings, address, resume)


def _run_sweep(settings: SweepJob, address: str | None, resume: bool) -> dict:
    from .tuner import StageJob, StageSearch, run_stage

    space = load_space(settings.space)
    stages = _stages(space, settings)
    if settings.data:  # refuse a metric the data cannot give before anything is written
        stages = _resolve_metrics(stages, settings.data)

    session = _start(settings, address, _demand(stages, settings))
    out, settings = session.out, session.settings
    stages = _resolve_metrics(stages, settings.data)  # the generated demo data, when no --data was given
    warm = warm_start.plan(settings.warm_start, stages) if settings.warm_start and not resume else {}
    planner = _planner(session, stages, resume) if settings.budget else None
    summary: dict = {"out": str(out), "stages": {}}
    for name, stage in stages.items():
        stage_fixed = session.fixed(name, space.is_two_stage, stage)
        session.plan = _packing_plan(session, name, stage, stage_fixed, _demand(stages, settings))
        stage_fixed = session.fixed(name, space.is_two_stage, stage)
        max_concurrent = session.max_concurrent(stage)
        time_budget_s = None
        if planner is not None:  # sized for the budget left, from a timing probe (sweep/budget.py)
            stage = planner.plan(name, stage, stage_fixed, settings.cpus_per_trial, settings.gpus_per_worker)
            storage.write_text(storage.join(out, budget.FILE), planner.saved())
            size = planner.sizes[name]
            time_budget_s = None if resume else max(1.0, size.time_budget_s)
            print(f"budget: stage {name} gets {size.time_budget_s:.0f} s: {size.trials} trials x up to {size.epochs} "
                  f"epochs x {size.steps_per_epoch} steps (measured {size.t_step * 1000:.1f} ms/step, "
                  f"{size.t_eval:.2f} s per in-trial score)", flush=True)
        print(f"\n== stage {name}: {stage.method}, {settings.trials or stage.sweep.trials} trials, "
              f"{max_concurrent} at a time, ranked by {stage.sweep.reported_metric} ({stage.sweep.mode}) ==",
              flush=True)
        search = StageSearch(trials=(settings.trials or None) if planner is None else None, warm=warm.get(name),
                             time_budget_s=time_budget_s)
        rows = run_stage(StageJob(name, stage, stage_fixed), session.output(resume), session.pool,
                         session.resources(stage), search)
        best = leaderboard.best(rows)
        failed = [r for r in rows if not leaderboard.is_ok(r)]
        summary["stages"][name] = {"method": stage.method, "scored": len(rows) - len(failed), "failed": failed,
                                   "best": best}
        if name == "teacher" and space.is_two_stage:
            teacher = pick_teacher(rows, stage)
            if teacher is None:
                raise SweepError("stage 1 produced no scored CoLES checkpoint; see the trial errors above")
            storage.write_text(storage.join(out, "teacher.json"), json.dumps(teacher, indent=1, default=str))
            print(f"teacher: trial {teacher['trial_id']} ({teacher['primary_metric']} {teacher['primary_value']:.4g}; "
                  f"among the {stage.sweep.finalists} best by {teacher['selection_metric']})", flush=True)
    _print_summary(out, summary)
    return summary


def _planner(session: _Session, stages: dict[str, StageSpace], resume: bool) -> budget.Planner:
    """The budget's planner; a resumed sweep reads the sizes it chose (budget.json)."""
    settings = session.settings
    if settings.trials:  # --trials with --budget: the budget sizes steps and epochs for that many trials
        stages = {n: replace(s, sweep=replace(s.sweep, trials=settings.trials,
                                              finalists=min(s.sweep.finalists, settings.trials)))
                  for n, s in stages.items()}
    saved_at = storage.join(session.out, budget.FILE)
    saved = json.loads(storage.read_text(saved_at)) if resume and storage.exists(saved_at) else None
    slots = session.max_concurrent(next(iter(stages.values())))
    gpus = slots * settings.workers_per_trial * settings.gpus_per_worker
    return budget.Planner(budget.parse(settings.budget), stages, slots, gpus, saved)


def pick_teacher(rows: list[dict], stage: StageSpace) -> dict | None:
    """The stage's teacher: the best downstream among its finalists; a multi-objective stage's
    finalists come from its Pareto front by the knee rule (sweep/pareto.py)."""
    if stage.sweep.cost:
        return leaderboard.best(pareto.finalists([r for r in rows if leaderboard.is_ok(r)], stage.sweep.finalists))
    return leaderboard.pick_teacher(rows, stage.sweep.finalists)


def reseed_best(out, seeds=(1, 2), address: str | None = None) -> list[dict]:
    """Re-run each stage's best config (by the downstream selection metric) with other seeds, so the
    report can give mean +- std over seeds. Re-runs already on the leaderboard are kept."""
    settings = _resolve(SweepJob(out=str(out)), resume=True)
    space = load_space(settings.space)
    stages = _resolve_metrics(_stages(space, settings), settings.data)
    board = leaderboard.read_rows(out)
    if not board:
        raise SweepError(f"{out} has no scored trial yet; run or resume the sweep first")
    with sweep_lock(settings.out):
        return _reseed(settings.out, settings, space, stages, board, seeds, address)


def _reseed(out, settings, space, stages, board: list, seeds, address) -> list[dict]:
    from ray import tune

    from .tuner import StageJob, StageSearch, run_stage

    session = _start(settings, address, len(seeds))
    rows = []
    for name, stage in stages.items():
        best = leaderboard.best(leaderboard.originals(board, name))
        if best is None:
            continue
        params = leaderboard.parse_params(best["params"])
        print(f"\n== re-seeding {name} trial {best['trial_id']} with seeds {list(seeds)} ==", flush=True)
        job = StageJob(f"{name}_reseed_{best['trial_id']}", stage, session.fixed(name, space.is_two_stage),
                       row_stage=name, reseed_of=best["trial_id"])
        search = StageSearch(param_space={**params, "train.seed": tune.grid_search(list(seeds))})
        rows += run_stage(job, session.output(resume=True), session.pool, session.resources(stage), search)
    return rows


def _print_summary(out: str, summary: dict) -> None:
    print("\nsweep finished")
    for name, s in summary["stages"].items():
        b = s["best"]
        for row in s.get("failed", []):
            print(f"  {name:<20} trial {row['trial_id']} {row['status']}: {row['error']}")
        if b:
            test = {k: v for k, v in b.items() if k.startswith("tree_test_")}
            test_text = ", ".join(f"{k} {v:.4g}" for k, v in test.items())
            print(f"  {name:<20} {s['method']:<10} {s['scored']} scored; best {b['trial_id']}: "
                  f"{b['primary_metric']} {b['primary_value']:.4g}; {test_text}")
    main = summary["stages"].get("mlem") or next(iter(summary["stages"].values()), None)
    print(f"TensorBoard:  tensorboard --logdir {out}")
    print(f"leaderboard:  {leaderboard.path(out)}  (mlem-ray report {out})")
    if main and main["best"]:
        print(f"best checkpoint: {main['best']['checkpoint']}")
    sys.stdout.flush()
