"""A pretraining run's lifecycle, as `sweep/pipeline.run_sweep` is a sweep's: check everything
refusable before `--out` is touched, find or clear the run directory (resume, overwrite), train
inline or through Ray Train, and leave `best/` and `last/` in the run directory (a path, or an
object-store URI through a local staging directory uploaded at the end).

Where the loop runs (`runs_inline`): in this process, on this machine's CPU or GPU, for one
worker; through Ray Train only for more than one worker, or for one GPU worker when this machine
has no GPU (Ray then places it on a node that has one).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import storage
from ..config import METHODS, Config, ConfigError, make_config
from ..errors import UsageError

# Keys a resumed run may take from today's flags although its saved config.yaml says otherwise:
# where the data set is now, how long to go on (with optim.schedule=cosine a changed train.epochs
# stretches the schedule to the new end), and how this machine runs it. Any other key that
# differs from the saved run is refused, naming it: the run would no longer be the one saved.
RESUME_MAY_CHANGE = ("data.path", "train.epochs", "train.budget_cpu_s", "train.device", "train.threads",
                     "train.prefetch", "train.loader_workers", "train.sync_every")


@dataclass(frozen=True)
class PretrainJob:
    """What `mlem-ray pretrain` asks for."""

    method: str  # "" on --resume: the saved run's
    data: str  # prepared data set, a path or URI
    out: str = ""  # run directory or URI; "" -> runs/pretrain-<method>
    overrides: dict = field(default_factory=dict)  # flat section.key -> value (--set, --epochs, --teacher)
    base: dict | None = None  # nested config (--config YAML)
    resume: bool = False
    overwrite: bool = False
    workers: int = 1
    gpus_per_worker: float = 0.0
    address: str | None = None

    def config(self) -> Config:
        """The method's defaults, then `base`, then `overrides`, then the data path."""
        return make_config(self.method, {**self.overrides, "data.path": str(self.data)}, self.base)

    @property
    def target(self) -> str:
        if not self.out and not self.method:
            raise UsageError("pretrain needs --method (or --out RUN with --resume)")
        return str(self.out or f"runs/pretrain-{self.method}")

    def requested(self) -> dict:
        """The flat keys the flags set explicitly (--method, --config, --set, --epochs, --teacher)."""
        flat = {f"{section}.{key}": value for section, values in (self.base or {}).items()
                if isinstance(values, dict) for key, value in values.items()}
        if self.method:
            flat["objective.method"] = self.method
        return {**flat, **self.overrides, "data.path": str(self.data)}


@dataclass(frozen=True)
class PretrainResult:
    out: str  # the run directory (path or URI)
    epochs: int  # train.epochs of the run
    best_val_loss: float | None  # None: the run had no epoch left to train


def read_config_file(path) -> dict:
    """A --config YAML file as the nested dict PretrainJob.base takes; refused with one line when
    it is missing or not YAML."""
    from pathlib import Path

    import yaml

    if not Path(path).exists():
        raise UsageError(f"--config {path} does not exist")
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from None


def run_overrides(overrides: dict, epochs: int | None = None, teacher=None) -> dict:
    """The flat overrides of a run: `overrides` (--set), then --epochs and --teacher on top."""
    out = dict(overrides)
    if epochs is not None:
        out["train.epochs"] = epochs
    if teacher:
        out["objective.teacher"] = str(teacher)
    return out


def runs_inline(workers: int, gpus_per_worker: float, gpu_here: bool) -> bool:
    """One worker runs the loop in this process (on this machine's GPU when it asks for one and
    has one: no Ray Train start-up); more than one worker, or a GPU worker this machine cannot
    host, goes through Ray Train."""
    return workers == 1 and (gpus_per_worker == 0 or gpu_here)


def run_pretrain(job: PretrainJob, say: Callable[[str], None] = print) -> PretrainResult:
    """Train one encoder as `job` asks; `say` gets the progress lines (the epochs print through
    the reporter)."""
    import torch

    from ..data.schema import check_prepared
    from .loop import preflight, resolve_device

    if not job.method and not job.resume:
        raise UsageError(f"--method is required ({', '.join(METHODS)}); only --resume takes the saved run's")
    check_prepared(job.data)  # before the config: a wrong --data is the likeliest mistake
    if job.workers < 1 or job.gpus_per_worker < 0:
        raise UsageError("--workers must be >= 1 and --gpus-per-worker >= 0")
    target = job.target
    cfg = resumed_config(job, target) if job.resume else job.config()
    inline = runs_inline(job.workers, job.gpus_per_worker, torch.cuda.is_available())
    # Everything refusable is refused before --out is touched.
    inputs = preflight(cfg, local_device=inline)
    device = torch.device("cuda") if inline and job.gpus_per_worker > 0 else resolve_device(cfg.train.device)
    check_out(target, cfg)
    resume = _prepare_run_dir(target, job.resume, job.overwrite)
    if not inline:
        return _run_distributed(job, cfg, target, resume, say)
    return _run_inline(cfg, target, resume, inputs, device, say)


def resumed_config(job: PretrainJob, target: str) -> Config:
    """The saved run's config (RUN/last/config.yaml), with what the flags may change on a resume
    (RESUME_MAY_CHANGE); a flag that contradicts the saved run is refused, naming the keys.
    Flags repeating the saved values are fine; no flags at all continue the saved run."""
    import yaml

    last = storage.join(target, "last")
    if not storage.exists(storage.join(last, "model.pt")):
        raise UsageError(f"--resume: {target} holds no run to continue (no {last})")
    try:
        saved = Config.from_dict(yaml.safe_load(storage.read_text(storage.join(last, "config.yaml"))))
    except (OSError, ConfigError, yaml.YAMLError) as e:
        raise UsageError(f"--resume: cannot read {storage.join(last, 'config.yaml')} ({' '.join(str(e).split())[:200]})"
                         ) from None
    requested = job.requested()
    asked = saved.replace(**requested).to_dict()  # type-checked and coerced as the saved values are
    before = saved.to_dict()
    value = lambda d, key: d[key.split(".")[0]][key.split(".")[1]]  # noqa: E731
    differ = [k for k in requested if k not in RESUME_MAY_CHANGE and value(asked, k) != value(before, k)]
    if differ:
        shown = ", ".join(f"{k}={value(asked, k)!r} (saved: {value(before, k)!r})" for k in differ)
        raise UsageError(f"--resume: the flags contradict the run saved in {target}: {shown}; drop them to continue "
                         "the saved run, or start a new run (another --out, or --overwrite)")
    return saved.replace(**{k: v for k, v in requested.items() if k in RESUME_MAY_CHANGE})


def check_out(target: str, cfg: Config) -> None:
    """The one place a run's --out is checked before any work starts: writable, not under a file,
    neither the data set nor the teacher nor inside them (--overwrite would delete them), and the
    stale temporaries of killed runs there removed. (The resume checkpoint lies inside --out.)"""
    from ..outputs import check_output

    check_output(target, inputs=[cfg.data.path, cfg.objective.teacher or None])
    try:
        storage.check_writable(target)
    except storage.StorageError as e:
        raise UsageError(f"--out {e}") from None


def _prepare_run_dir(target: str, resume: bool, overwrite: bool) -> str | None:
    """-> the checkpoint to resume from (None: a fresh run). A run already in `target` is kept
    unless asked to continue it or to start over."""
    if resume:
        last = storage.join(target, "last")
        if not storage.exists(storage.join(last, "model.pt")):
            raise UsageError(f"--resume: {target} holds no run to continue (no {last})")
        return last
    if storage.is_dir(target) and storage.listdir(target):
        if not overwrite:
            raise UsageError(f"--out {target} already holds a run; pass --resume to continue it or --overwrite to start over")
        storage.delete(target)
    return None


def _run_inline(cfg: Config, target: str, resume: str | None, inputs, device, say) -> PretrainResult:
    from .local import LocalReporter
    from .loop import Runtime, train

    say(f"pretraining {cfg.objective.method} on {cfg.data.path} -> {target}" + (" (GPU)" if device.type == "cuda" else ""))
    # On object storage the run happens in a local directory (one per URI) uploaded at the end.
    with storage.staging(target, fetch=("last",) if resume else ()) as out:
        metrics = train(cfg, LocalReporter(out), Runtime(device=device, progress=True),
                        resume=out / "last" if resume else None, inputs=inputs)
    return PretrainResult(target, cfg.train.epochs, metrics["best_val_loss"] if metrics else None)


def _run_distributed(job: PretrainJob, cfg: Config, out: str, resume: str | None, say) -> PretrainResult:
    """N DDP workers through Ray Train; best/ and last/ are copied out of the Train run (`out`: a
    path or a URI; the Train run keeps its checkpoints there too)."""
    import ray

    from .ray_train import run_distributed
    from .resources import check_gpus, connect

    connect(job.address, env_vars=storage.worker_env_for(out, job.data))
    check_gpus(job.gpus_per_worker, job.workers)
    global_batch = cfg.data.batch_size * job.workers
    say(f"pretraining {cfg.objective.method} on {job.data} with {job.workers} Ray Train workers "
        f"(global batch {global_batch} sequences) -> {out}")
    cpus = max(0.5, ray.cluster_resources().get("CPU", 1) / job.workers) if not job.gpus_per_worker else 1.0
    result = run_distributed(cfg, job.workers, job.gpus_per_worker, storage.join(out, "ray_train"), name="run",
                             cpus_per_worker=cpus, resume=resume,
                             # metrics.jsonl + scalars, as a local run (a URI --out: rank 0 has no local view of it)
                             extra={"log_dir": str(storage.local_path(out))} if storage.local_path(out) else {})
    best, best_metrics = min(result.best_checkpoints, key=lambda cm: cm[1].get("val_loss", float("inf")))
    for name, ckpt in (("best", best), ("last", result.checkpoint)):
        storage.copy_dir(storage.uri_of(ckpt.filesystem, ckpt.path), storage.join(out, name))
    return PretrainResult(out, cfg.train.epochs, best_metrics.get("val_loss", float("inf")))
