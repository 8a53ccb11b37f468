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
from ..config import Config, make_config
from ..errors import UsageError


@dataclass(frozen=True)
class PretrainJob:
    """What `mlem-ray pretrain` asks for."""

    method: str
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
        return str(self.out or f"runs/pretrain-{self.method}")


@dataclass(frozen=True)
class PretrainResult:
    out: str  # the run directory (path or URI)
    epochs: int  # train.epochs of the run
    best_val_loss: float | None  # None: the run had no epoch left to train


def runs_inline(workers: int, gpus_per_worker: float, gpu_here: bool) -> bool:
    """One worker runs the loop in this process (on this machine's GPU when it asks for one and
    has one: no Ray Train start-up); more than one worker, or a GPU worker this machine cannot
    host, goes through Ray Train."""
    return workers == 1 and (gpus_per_worker == 0 or gpu_here)


def run_pretrain(job: PretrainJob, say: Callable[[str], None] = print) -> PretrainResult:
    """Train one encoder as `job` asks; `say` gets the progress lines (the epochs print through
    the reporter)."""
    import torch

    from .loop import preflight, resolve_device

    if job.workers < 1 or job.gpus_per_worker < 0:
        raise UsageError("--workers must be >= 1 and --gpus-per-worker >= 0")
    cfg = job.config()
    inline = runs_inline(job.workers, job.gpus_per_worker, torch.cuda.is_available())
    # Everything refusable is refused before --out is touched.
    inputs = preflight(cfg, local_device=inline)
    device = torch.device("cuda") if inline and job.gpus_per_worker > 0 else resolve_device(cfg.train.device)
    target = job.target
    check_out(target, cfg)
    resume = _prepare_run_dir(target, job.resume, job.overwrite)
    if not inline:
        return _run_distributed(job, cfg, target, resume, say)
    return _run_inline(cfg, target, resume, inputs, device, say)


def check_out(target: str, cfg: Config) -> None:
    """The one place a run's --out is checked before any work starts."""
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
