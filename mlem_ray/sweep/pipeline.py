"""The main job: the two-stage MLEM sweep (or a one-stage sweep), end to end.

Every stage ranks its trials by the in-trial selection score (evaluation/selection.py: a linear
probe on a fixed subset of the labelled training pool, or RankMe without labels). Stage 1 sweeps
CoLES teachers; the evaluation actor scores every finished trial downstream; among the stage's
finalists (best in-trial score) the best downstream score becomes the teacher. Stage 2 sweeps
MLEM against it. Comparison stages (generative, hybrid, ...) are swept at the same budget.

Sweep directory layout (`--out`):
  sweep.json              the sweep's settings (so `--resume` needs only `--out`)
  space.yaml              the search space used
  data/                   the generated Pendulum set when no --data was given
  <stage>/<trial_id>/     Tune trials: TensorBoard curves, checkpoints; hparams/ its HParams session
  optuna.journal          every stage's Optuna study (sweep/optuna_storage.py)
  mlflow.db, wandb/       with --tracker mlflow|wandb (sweep/trackers.py)
  leaderboard.parquet     one row per scored trial (the evaluation actor's)
  tensorboard_leaderboard/
  teacher.json            the chosen teacher (two-stage sweeps)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import DataError, SweepError  # noqa: F401  (SweepError re-exported)
from ..evaluation import leaderboard
from .lock import sweep_lock
from .space import SearchSpace, StageSpace

# Each epoch checkpoints, so Tune's snapshot-frequency warning would fire on every small trial
# (set before ray.tune is imported).
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

DEFAULT_SPACE = "quick.yaml"
DEMO_SEQUENCES = 2000


def search_space_dir() -> Path:
    here = Path(__file__).resolve().parents[2] / "search_spaces"
    return here if here.exists() else Path.cwd() / "search_spaces"


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
    folds: int = 5
    sequences: int = DEMO_SEQUENCES
    trackers: list = field(default_factory=list)  # mlflow, wandb (sweep/trackers.py)
    eval_gpus: float = 0.0  # GPU share of the evaluation actor (it embeds on the GPU when > 0)


def _resolve(settings: SweepJob, resume: bool) -> SweepJob:
    out = Path(settings.out)
    state = out / "sweep.json"
    if resume:
        if not state.exists():
            raise SweepError(f"--resume: {out} holds no sweep (no sweep.json); start one with mlem-ray sweep --out {out}")
        saved = SweepJob(**json.loads(state.read_text()))
        # The space as copied at the start: the original path may be gone (a job's working dir).
        return replace(saved, out=str(out), space=str(out / "space.yaml"))
    if state.exists():
        raise SweepError(f"--out {out} already holds a sweep; pass --resume to continue it or choose another --out")
    space = Path(settings.space) if settings.space else search_space_dir() / DEFAULT_SPACE
    if not space.exists():
        raise SweepError(f"--space {space} does not exist (search spaces live in {search_space_dir()})")
    SearchSpace.load(space)  # refuse a bad file before anything is written
    data = settings.data
    if data and not (Path(data) / "schema.json").exists():
        raise DataError(f"--data {data} is not a prepared data set (no schema.json); create it with `mlem-ray data ...`")
    return replace(settings, space=str(space.resolve()), data=str(Path(data).resolve()) if data else "")


def _prepare_out(settings: SweepJob) -> Path:
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "space.yaml").exists():
        shutil.copyfile(settings.space, out / "space.yaml")
    if not settings.data:
        data = out / "data"
        if not (data / "schema.json").exists():
            from ..data import pendulum, prepare, write_prepared
            from ..data.ingest import IngestSpec

            print(f"generating Pendulum ({settings.sequences} sequences) in {data}", flush=True)
            events, targets = pendulum.generate(settings.sequences, seed=0)
            spec = IngestSpec(id_col="id", time_col="time", num_cols=("x", "y"), target_col="L", task="regression",
                              source=f"pendulum(sequences={settings.sequences}, seed=0)")
            write_prepared(data, *prepare(events, spec, targets), overwrite=True)
        settings = replace(settings, data=str(data.resolve()))
    (out / "sweep.json").write_text(json.dumps(asdict(settings), indent=1))
    return out


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
            path = search_space_dir() / f"{method}.yaml"
            if not path.exists():
                raise SweepError(f"--methods {method}: no search space {path}")
            own = next(iter(SearchSpace.load(path).stages.values()))
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
    from ..evaluation.selection import MIN_LABELLED, default_metric

    seqs = EventSequences.open(data)
    default = default_metric(seqs)
    for name, stage in stages.items():
        if stage.sweep.metric == "probe" and default != "probe":
            raise SweepError(f"stage {name}: sweep.metric probe needs >= {MIN_LABELLED} labelled training sequences; "
                             f"{data} has {len(seqs.labelled('train', 'val'))}: use metric rankme")
    return {name: stage.resolved(default) for name, stage in stages.items()}


@dataclass
class _Session:
    """What the stages of one sweep share once Ray is up."""

    out: Path
    settings: SweepJob
    actor: object
    actor_name: str
    cpus: float
    actor_cpus: float

    def fixed(self, name: str, two_stage: bool) -> dict:
        fixed = {"data.path": self.settings.data, "train.threads": max(1, int(self.settings.cpus_per_trial))}
        if self.settings.gpus_per_worker:
            fixed["train.device"] = "cuda"
        if name == "mlem" and two_stage:
            fixed["objective.teacher"] = json.loads((self.out / "teacher.json").read_text())["checkpoint"]
        return fixed

    def max_concurrent(self, stage: StageSpace) -> int:
        per_trial = self.settings.cpus_per_trial
        if self.settings.workers_per_trial > 1 or self.settings.gpus_per_worker:
            per_trial = 0.5 + 0.5 * self.settings.workers_per_trial  # trial driver + workers (tuner.py)
        return stage.sweep.max_concurrent or max(1, int((self.cpus - self.actor_cpus) // per_trial))

    def stage_kwargs(self) -> dict:
        return {"workers": self.settings.workers_per_trial, "gpus_per_worker": self.settings.gpus_per_worker,
                "trackers": tuple(self.settings.trackers)}


def check_storage_reachable(out: Path, nodes: list[dict], timeout_s: float = 60.0) -> None:
    """Every alive node must see the sweep directory: trials write checkpoints there and the
    evaluation actor reads them. A node that cannot (no shared storage) is refused up front with a
    clear message instead of trials failing or hanging later. nodes: ray.nodes() entries of the
    alive nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = out / ".storage_probe"
    probe.write_text(str(os.getpid()))

    @ray.remote(num_cpus=0)
    def sees(path: str, token: str) -> bool:
        p = Path(path)
        return p.exists() and p.read_text() == token

    refs = {n["NodeID"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(probe), str(os.getpid())) for n in nodes}
    try:
        blind = [f"{n[:8]}" for n, ok in zip(refs, ray.get(list(refs.values()), timeout=timeout_s)) if not ok]
    except ray.exceptions.GetTimeoutError:
        raise SweepError(f"could not check within {timeout_s:.0f} s that every Ray node sees --out {out}") from None
    except ray.exceptions.RayError as e:  # a node died, or its runtime env failed to set up
        raise SweepError(f"could not check that every Ray node sees --out {out}: {type(e).__name__}") from None
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise SweepError(f"--out {out} is not visible from Ray node(s) {', '.join(blind)}: on a multi-node cluster "
                         "--out must be shared storage (an NFS mount at the same path on every node)")


def _start(settings: SweepJob, address: str | None) -> _Session:
    import ray

    from ..evaluation.actor import get_or_create_actor

    from ..training.resources import check_gpus, connect

    connect(address)
    resources = ray.cluster_resources()
    check_gpus(settings.gpus_per_worker, settings.workers_per_trial, resources)
    if settings.eval_gpus > resources.get("GPU", 0.0):  # an unplaceable actor would wait forever
        raise SweepError(f"--eval-gpus {settings.eval_gpus:g} but the Ray cluster has {resources.get('GPU', 0.0):g} "
                         "GPUs; drop the flag to evaluate on CPU")
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1:
        out = Path(settings.out)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            check_storage_reachable(out, alive)
        except SweepError:
            if created:
                shutil.rmtree(out, ignore_errors=True)  # leave nothing behind a refused start
            raise
    out = _prepare_out(settings)
    settings = SweepJob(**json.loads((out / "sweep.json").read_text()))
    cpus = resources.get("CPU", 1.0)
    # The actor scores while trials train; on a small machine it takes no CPU reservation so that
    # it never blocks trial scheduling (it runs between trial completions, single-threaded).
    actor_cpus = 1.0 if cpus >= 4 else 0.0
    actor_name = evaluator_name(out)
    actor = get_or_create_actor(out, settings.data, actor_name, cpus=actor_cpus, gpus=settings.eval_gpus,
                                folds=settings.folds)
    return _Session(out.resolve(), settings, actor, actor_name, cpus, actor_cpus)


def evaluator_name(out) -> str:
    """The evaluation actor's name for the sweep in `out`: one actor per sweep dir, found again by
    a resumed driver."""
    return "evaluator-" + hashlib.sha1(str(Path(out).resolve()).encode()).hexdigest()[:10]


def run_sweep(settings: SweepJob, address: str | None = None, resume: bool = False) -> dict:
    settings = _resolve(settings, resume)
    with sweep_lock(settings.out):
        return _run_sweep(settings, address, resume)


def _run_sweep(settings: SweepJob, address: str | None, resume: bool) -> dict:
    from .tuner import run_stage

    space = SearchSpace.load(settings.space)
    stages = _stages(space, settings)
    if settings.data:  # refuse a metric the data cannot give before anything is written
        stages = _resolve_metrics(stages, settings.data)
    session = _start(replace(settings, out=str(Path(settings.out).resolve())), address)
    out, settings = session.out, session.settings
    stages = _resolve_metrics(stages, settings.data)  # the generated demo data, when no --data was given
    summary: dict = {"out": str(out), "stages": {}}
    for name, stage in stages.items():
        stage_fixed = session.fixed(name, space.is_two_stage)
        max_concurrent = session.max_concurrent(stage)
        print(f"\n== stage {name}: {stage.method}, {settings.trials or stage.sweep.trials} trials, "
              f"{max_concurrent} at a time, ranked by {stage.sweep.reported_metric} ({stage.sweep.mode}) ==",
              flush=True)
        rows = run_stage(name, stage, out, stage_fixed, session.actor, session.actor_name, settings.cpus_per_trial,
                         max_concurrent, resume=resume, trials=settings.trials or None, **session.stage_kwargs())
        best = leaderboard.best(rows)
        failed = [r for r in rows if not leaderboard.is_ok(r)]
        summary["stages"][name] = {"method": stage.method, "scored": len(rows) - len(failed), "failed": failed,
                                   "best": best}
        if name == "teacher" and space.is_two_stage:
            teacher = leaderboard.pick_teacher(rows, stage.sweep.finalists)
            if teacher is None:
                raise SweepError("stage 1 produced no scored CoLES checkpoint; see the trial errors above")
            (out / "teacher.json").write_text(json.dumps(teacher, indent=1, default=str))
            print(f"teacher: trial {teacher['trial_id']} ({teacher['primary_metric']} {teacher['primary_value']:.4g}; "
                  f"among the {stage.sweep.finalists} best by {teacher['selection_metric']})", flush=True)
    _print_summary(out, summary)
    return summary


def reseed_best(out, seeds=(1, 2), address: str | None = None) -> list[dict]:
    """Re-run each stage's best config (by the downstream selection metric) with other seeds, so the
    report can give mean +- std over seeds. Re-runs already on the leaderboard are kept."""
    settings = _resolve(SweepJob(out=str(out)), resume=True)
    space = SearchSpace.load(settings.space)
    stages = _resolve_metrics(_stages(space, settings), settings.data)
    board = leaderboard.read(out)
    if board.empty:
        raise SweepError(f"{out} has no scored trial yet; run or resume the sweep first")
    with sweep_lock(out):
        return _reseed(out, settings, space, stages, board, seeds, address)


def _reseed(out, settings, space, stages, board, seeds, address) -> list[dict]:
    from ray import tune

    from .tuner import run_stage

    session = _start(replace(settings, out=str(Path(out).resolve())), address)
    rows = []
    for name, stage in stages.items():
        originals = board[(board["stage"] == name) & (board["reseed_of"].fillna("") == "")].to_dict("records")
        best = leaderboard.best(originals)
        if best is None:
            continue
        params = json.loads(best["params"])
        print(f"\n== re-seeding {name} trial {best['trial_id']} with seeds {list(seeds)} ==", flush=True)
        rows += run_stage(f"{name}_reseed_{best['trial_id']}", stage, session.out, session.fixed(name, space.is_two_stage),
                          session.actor, session.actor_name, settings.cpus_per_trial, session.max_concurrent(stage),
                          resume=True, param_space={**params, "train.seed": tune.grid_search(list(seeds))},
                          reseed_of=best["trial_id"], row_stage=name, **session.stage_kwargs())
    return rows


def _print_summary(out: Path, summary: dict) -> None:
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
