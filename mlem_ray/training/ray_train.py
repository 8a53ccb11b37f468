"""Ray Train (V2) around the one training loop: N DDP workers, gloo on CPU and NCCL on GPU.

Each worker runs `train` with a Runtime built from its Train context; the model is wrapped with
`ray.train.torch.prepare_model` (DDP), each worker reads its own shard of every epoch's
permutation (EpochSampler), and every rank reports each epoch, rank 0 with the checkpoint.
The global batch is data.batch_size x workers sequences (CoLES: x slices), and the contrastive
and alignment losses see all of it (objectives/gather.py).
A crashed worker makes Train restart the group from the last reported checkpoint
(FailureConfig.max_failures): the epochs after it are re-run, none before.
"""
from __future__ import annotations

import math
from pathlib import Path

import ray
import ray.train
import ray.train.torch

from ..config import REPORTED, Config
from .loop import Runtime, train

FAIL_ONCE_MARKER = "fail_once_at_epoch"


def ranking_metric(cfg: Config) -> tuple[str, str]:
    """The metric (and its mode) that ranks this run's checkpoints: the in-trial selection score when
    the run computes one (training/selection.py), else the validation loss."""
    if cfg.train.selection == "none":
        return "val_loss", "min"
    return REPORTED[cfg.train.selection]


class TrainReporter:
    """Non-finite values are left out, except the ranking metric (Tune needs it in every result).
    With `log_dir`, rank 0 also writes each epoch there as a local run does (metrics.jsonl and
    TensorBoard scalars): live, and every epoch of every attempt (after a worker restart, the
    Train result's own metrics hold only the last attempt's). `log_dir` must be visible to rank 0,
    as the Train run's storage already must be."""

    def __init__(self, metric: str = "val_loss", log_dir: str | None = None):
        self.metric = metric
        self.log = None
        if log_dir and ray.train.get_context().get_world_rank() == 0:
            from .local import EpochLog

            self.log = EpochLog(log_dir)

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        if self.log is not None:
            self.log.write(metrics)
        flat = {k: (int(v) if isinstance(v, bool) else float(v)) for k, v in metrics.items()
                if isinstance(v, (int, float)) and (not isinstance(v, float) or math.isfinite(v) or k == self.metric)}
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint is not None else None
        ray.train.report(flat, checkpoint=ckpt)


def _fail_once(marker_dir: str, epoch_to_fail: int):
    """Test hook: raise in rank 0 at the start of `epoch_to_fail`, the first time only (a marker
    file on shared disk remembers it across the restart); logs every epoch start to
    `epochs_started` beside it."""
    marker = Path(marker_dir) / "failed_once"

    def hook(epoch, step, batch):
        if step == 0 and ray.train.get_context().get_world_rank() == 0:
            marker.parent.mkdir(parents=True, exist_ok=True)
            with open(marker.with_name("epochs_started"), "a") as f:
                f.write(f"{epoch}\n")
            if epoch == epoch_to_fail and not marker.exists():
                marker.write_text(str(epoch))
                raise RuntimeError(f"injected worker failure at epoch {epoch}")
        return batch

    return hook


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = Config.from_dict(loop_config["config"])
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    runtime = Runtime(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), device=device,
                      prepare_model=lambda m: ray.train.torch.prepare_model(m, move_to_device=False))
    hook = None
    if loop_config.get(FAIL_ONCE_MARKER) is not None:
        hook = _fail_once(loop_config["marker_dir"], loop_config[FAIL_ONCE_MARKER])
    reporter = TrainReporter(ranking_metric(cfg)[0], loop_config.get("log_dir"))
    checkpoint = ray.train.get_checkpoint()  # set when Train restarts the group after a failure
    if checkpoint is None:
        train(cfg, reporter, runtime, resume=loop_config.get("resume"), on_batch=hook)
        return
    # In place on shared storage; a temporary copy (removed on exit) only where it lives elsewhere.
    with checkpoint.as_directory() as resume:
        train(cfg, reporter, runtime, resume=resume, on_batch=hook)


def run_distributed(cfg: Config, workers: int, gpus_per_worker: float, storage, name: str,
                    cpus_per_worker: float = 1.0, max_failures: int = 2, resume: str | None = None,
                    callbacks=None, extra: dict | None = None):
    """Run one pretraining through TorchTrainer, keeping its checkpoints under `storage` (a path
    or an object-store URI). -> ray.train.Result."""
    from ray.train.torch import TorchTrainer

    from .. import storage as st

    use_gpu = gpus_per_worker > 0
    metric, mode = ranking_metric(cfg)
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "resume": str(resume) if resume else None, **(extra or {})},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=ray.train.torch.TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, **st.ray_storage(storage), callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=metric,
                                                         checkpoint_score_order=mode),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
    )
    return trainer.fit()
