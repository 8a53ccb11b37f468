"""The one training loop. A local run, a Ray Tune trial and every Ray Train worker call `train`;
what differs between them comes in through a `Runtime` (rank, device, model wrapping) and a
`Reporter` (where metrics and checkpoints go). This module imports no Ray.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data.batching import FullCollator, SequenceDataset, SliceCollator, SliceSampler
from ..data.prepared import EventSequences
from ..errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, ResourceError
from .accel import Precision, prefetch, reuse_freed_memory
from .checkpoint import check_schema, load_checkpoint, load_encoder, save_checkpoint


class Reporter(Protocol):
    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        """Called once per epoch on every rank; `checkpoint` is a directory on rank 0, else None.
        The directory is the reporter's to keep, copy or delete."""


@dataclass
class Runtime:
    """Where the loop runs. Local: rank 0 of 1, no wrapping. Ray Train: set from the worker context."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m
    progress: bool = False  # a tqdm bar per epoch (on a terminal only; the reporter prints the epoch line)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ResourceError("train.device=cuda but torch sees no GPU here; use train.device=auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def preflight(cfg: Config, seqs: EventSequences | None = None, local_device: bool = True) -> EventSequences:
    """Refuse, before anything is written or trained, a config this data set or machine cannot run:
    no GPU for train.device=cuda, a supervised run without targets, an MLEM run without a usable
    teacher, too few training sequences. `local_device`: the run uses this machine's device (a Ray
    Train worker gets its own). -> the opened data set."""
    if local_device:
        resolve_device(cfg.train.device)
    seqs = seqs or EventSequences.open(cfg.data.path)
    supervised = cfg.objective.method == "supervised"
    if supervised and (seqs.targets is None or not seqs.schema.task):
        raise DataError(f"--method supervised needs a data set with targets; {seqs.path} has none "
                        "(pass --targets to `mlem-ray data ingest`)")
    if cfg.objective.method == "mlem":
        if not cfg.objective.teacher:
            raise ConfigError("MLEM needs a teacher: pass --teacher CKPT (a CoLES checkpoint of the same data)")
        teacher = load_checkpoint(cfg.objective.teacher)
        check_schema(teacher, seqs.schema)
        if teacher.config.objective.method != "coles":
            raise CheckpointError(
                f"teacher {cfg.objective.teacher} was trained with {teacher.config.objective.method!r}, not coles")
    train_rows = seqs.labelled("train") if supervised else seqs.indices("train")
    if len(train_rows) < 2:
        raise DataError(f"the training split of {seqs.path} has {len(train_rows)} usable sequences; too few to train")
    return seqs


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled per epoch from (seed, epoch) and sharded over workers (rank::world of one
    permutation): N workers x B rows per step cover the same sequences as 1 worker x N*B."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        per_rank = self.n // self.world if self.world > 1 else self.n
        return iter(order[self.rank :: self.world][:per_rank].tolist())

    def __len__(self) -> int:
        return self.n // self.world if self.world > 1 else self.n


def _batches(seqs, rows, kind, cfg: Config, runtime: Runtime, shuffle: bool, max_len: int):
    batch_size = cfg.data.batch_size
    collate = (
        SliceCollator(seqs, SliceSampler(cfg.data.slices, cfg.data.slice_min, cfg.data.slice_max), cfg.train.seed)
        if kind == "slices"
        else FullCollator(seqs, max_len)
    )
    sampler = EpochSampler(len(rows), shuffle, cfg.train.seed, runtime.rank, runtime.world_size)
    # Equal batch counts and sizes on every rank (collectives in the losses need both).
    # On a GPU the loader pins each batch, so the loop's non_blocking copies are asynchronous.
    loader = torch.utils.data.DataLoader(SequenceDataset(seqs, rows), batch_size=batch_size, sampler=sampler,
                                         collate_fn=collate, drop_last=runtime.world_size > 1 and shuffle,
                                         num_workers=cfg.train.loader_workers,
                                         pin_memory=runtime.device.type == "cuda")
    return loader, sampler, collate


def _lr_lambda(cfg: Config, total_steps: int):
    warmup, schedule = cfg.optim.warmup_steps, cfg.optim.schedule

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def _param_groups(objective: nn.Module, weight_decay: float):
    no_decay = {id(p) for p in getattr(objective, "no_decay_parameters", lambda: [])()}
    params = [p for p in objective.parameters() if p.requires_grad]
    decay = [p for p in params if id(p) not in no_decay]
    rest = [p for p in params if id(p) in no_decay]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def _reduce(values: dict, runtime: Runtime) -> dict:
    if runtime.world_size == 1:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def build_training_objective(cfg: Config, seqs: EventSequences, max_len: int, device) -> nn.Module:
    from ..objectives import build_objective

    teacher = None
    if cfg.objective.method == "mlem":  # preflight() has checked the teacher
        teacher, _ = load_encoder(cfg.objective.teacher, seqs.schema, device)
    train_targets = seqs.targets[seqs.indices("train")] if seqs.targets is not None else None
    return build_objective(cfg, seqs.schema, max_len, teacher, train_targets).to(device)


def train(cfg: Config, reporter: Reporter, runtime: Runtime | None = None, resume: str | Path | None = None,
          on_batch: Callable | None = None) -> dict:
    """Train `cfg.train.epochs` epochs (continuing from `resume`, a checkpoint with trainer state).

    Each epoch: train, validate, write a checkpoint (rank 0), report. Returns the last metrics.
    `on_batch(epoch, step, batch) -> batch` is a hook for tests and fault injection."""
    runtime = runtime or Runtime(device=resolve_device(cfg.train.device))
    reuse_freed_memory()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    seqs = preflight(cfg, local_device=False)  # the runtime already holds the device
    max_len = cfg.data.max_len or seqs.schema.max_len
    objective = build_training_objective(cfg, seqs, max_len, runtime.device)
    kind = objective.batch_kind
    supervised = cfg.objective.method == "supervised"
    train_rows = seqs.labelled("train") if supervised else seqs.indices("train")
    val_rows = seqs.labelled("val") if supervised else seqs.indices("val")
    train_loader, train_sampler, train_collate = _batches(seqs, train_rows, kind, cfg, runtime, True, max_len)
    val_loader, _, val_collate = _batches(seqs, val_rows, kind, cfg, runtime, False, max_len) if len(val_rows) else (None, None, None)

    steps_per_epoch = len(train_loader) if not cfg.train.steps_per_epoch else min(cfg.train.steps_per_epoch, len(train_loader))
    model = runtime.prepare_model(objective)
    # Every rank built the same initial weights from train.seed; from here on randomness (dropout)
    # should differ between ranks, or they all drop the same units. Rank 0 keeps its stream, so a
    # single-process run is unchanged.
    if runtime.rank:
        torch.manual_seed(cfg.train.seed + runtime.rank)
    # Decoupled weight decay (AdamW). With Adam's L2 term, a parameter whose loss gradient is near
    # zero is pulled to zero at about lr per step, because Adam normalises the decay term like any
    # gradient: on Pendulum the generative encoder's GRU weights fell from 0.044 to 0.0005 (mean |w|)
    # within two epochs and its embedding ended up worse than a random encoder's.
    optimizer = torch.optim.AdamW(_param_groups(objective, cfg.optim.weight_decay), lr=cfg.optim.lr)
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.budget_steps:
        total_steps = min(total_steps, cfg.train.budget_steps)  # a cosine schedule ends at the budget
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total_steps))
    precision = Precision(cfg.train.precision, runtime.device)
    start_epoch, best_val, cpu_spent = 0, math.inf, 0.0
    if resume:
        ckpt = load_checkpoint(resume, map_location=runtime.device)
        check_schema(ckpt, seqs.schema)
        objective.load_state_dict(ckpt.state["objective"])
        trainer_state = ckpt.state["trainer"]
        optimizer.load_state_dict(trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        precision.load_state_dict(trainer_state.get("grad_scaler"))
        _restore_rng(trainer_state, cfg, runtime)
        start_epoch = int(trainer_state["epoch"]) + 1
        best_val = float(trainer_state["best_val"])
        cpu_spent = float(trainer_state.get("cpu_spent", 0.0))  # the budget counts the run, not this process

    scorer = None
    if cfg.train.selection != "none" and runtime.is_main:  # Tune sees rank 0's metrics only
        from ..evaluation.selection import SelectionScorer

        scorer = SelectionScorer(seqs, cfg.train.selection, max_len, size=cfg.train.selection_size)
    # The last scored epoch's values (kept in the checkpoint, so a resumed trial reports them too).
    selection: dict = dict(trainer_state.get("selection", {})) if resume else {}

    metrics: dict = {}
    cpu_start = time.process_time() - cpu_spent
    out_of_budget = False
    for epoch in range(start_epoch, cfg.train.epochs):
        # The scheduler counts optimizer steps and is restored on resume, so the step budget is too.
        if cfg.train.budget_steps and scheduler.last_epoch >= cfg.train.budget_steps:
            break
        t0 = time.perf_counter()
        train_sampler.set_epoch(epoch)
        if kind == "slices":
            train_collate.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        # The prefetch generator is closed (its thread joined) when the epoch's loop ends.
        source = prefetch(train_loader, cfg.train.prefetch)
        batches = _progress(source, steps_per_epoch, epoch, runtime)
        for step, batch in enumerate(batches):
            if step >= steps_per_epoch:
                break
            if cfg.train.budget_cpu_s:
                spent = {"over": float(time.process_time() - cpu_start > cfg.train.budget_cpu_s)}
                if _reduce(spent, runtime)["over"] > 0:  # every rank stops at the same step
                    out_of_budget = True  # finish this epoch here: validate, checkpoint, stop
                    break
            if on_batch is not None:
                batch = on_batch(epoch, step, batch)
            batch = batch.to(runtime.device, non_blocking=True)
            with precision.autocast():
                out = model(batch)
            loss = out["loss"]
            finite = torch.isfinite(loss).to(torch.float64)
            if runtime.world_size > 1:
                finite = torch.tensor(_reduce({"f": finite.item()}, runtime)["f"] / runtime.world_size)
            if finite.item() < 1.0:
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in out.items())
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}, step {step} ({parts}); stopped, the last good "
                    f"checkpoint is kept. Lower optim.lr, check the data for extreme values, or keep optim.clip_grad on"
                )
            optimizer.zero_grad(set_to_none=True)
            precision.backward_step(loss, optimizer, objective.parameters(), cfg.optim.clip_grad)
            scheduler.step()
            _accumulate(sums, out, len(batch))
            if cfg.train.budget_steps and scheduler.last_epoch >= cfg.train.budget_steps:
                out_of_budget = True  # the same step on every rank: all count the same steps
                break
        if batches is not source:
            batches.close()
        source.close()  # join the prefetch thread before the next epoch moves the collator on
        train_metrics = _mean_metrics(sums, "train", runtime)
        with precision.autocast():
            val_metrics = _validate(model, val_loader, val_collate, kind, runtime)
        val_loss = val_metrics.get("val_loss", train_metrics.get("train_loss", math.nan))
        improved = val_loss < best_val
        best_val = min(best_val, val_loss)
        last_epoch = out_of_budget or epoch == cfg.train.epochs - 1
        scored = cfg.train.selection == "none" or last_epoch or (epoch + 1) % cfg.train.selection_every == 0
        if scorer is not None and scored:
            selection = {**scorer(objective.encoder, runtime.device), "selection_epoch": epoch}
        metrics = {"epoch": epoch, "val_loss": val_loss, "best_val_loss": best_val, "lr": scheduler.get_last_lr()[0],
                   "steps": scheduler.last_epoch,
                   "epoch_seconds": time.perf_counter() - t0, **train_metrics, **val_metrics,
                   "is_best": bool(improved), **selection}
        checkpoint_dir = None
        rng = _rng_states(runtime) if scored else None  # every rank's, gathered on every rank
        # Between scored epochs the selection values are the last scored epoch's; a checkpoint there
        # would be ranked by a score that is not its own, so only scored epochs carry one.
        if runtime.is_main and scored:
            checkpoint_dir = Path(tempfile.mkdtemp(prefix="mlem_ray_ckpt_")) / "checkpoint"
            trainer_state = {"epoch": epoch, "best_val": best_val, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "rng": rng,
                             "cpu_spent": time.process_time() - cpu_start, "max_len": max_len,
                             "selection": selection, "grad_scaler": precision.state_dict()}
        try:
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, cfg, seqs.schema, objective.encoder.state_dict(),
                                objective.state_dict(), trainer_state, metrics)
            reporter.report(metrics, checkpoint_dir)
        finally:  # the reporter has copied or moved it; nothing is left in the temp dir, even on error
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir.parent, ignore_errors=True)
        if out_of_budget:
            break
    return metrics


def _progress(loader, steps: int, epoch: int, runtime: Runtime):
    """The epoch's batches, behind a progress bar when asked for and stderr is a terminal (tqdm's
    disable=None); elsewhere (logs, Tune trials) the reporter's one line per epoch is the record."""
    if not (runtime.progress and runtime.is_main):
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, total=steps, desc=f"epoch {epoch}", unit="step", leave=False, disable=None)


def _rng_states(runtime: Runtime) -> list[dict]:
    """The RNG states of every rank (torch CPU, and CUDA when training on a GPU), in rank order,
    so that a resumed run continues each rank's own stream. A collective: every rank calls it."""
    mine = {"torch": torch.get_rng_state()}
    if runtime.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(runtime.device)
    if runtime.world_size == 1:
        return [mine]
    import torch.distributed as dist

    states: list = [None] * runtime.world_size
    dist.all_gather_object(states, mine)
    return [{k: v.cpu() for k, v in s.items()} for s in states]


def _restore_rng(trainer_state: dict, cfg: Config, runtime: Runtime) -> None:
    """Put back this rank's RNG streams. With another number of ranks than the checkpoint's, rank 0
    continues rank 0's stream and the others start fresh from seed + rank + epoch."""
    states = trainer_state.get("rng") or [{"torch": trainer_state["torch_rng"]}]
    same_ranks = len(states) == runtime.world_size
    if same_ranks or runtime.rank == 0:
        mine = states[runtime.rank if same_ranks else 0]
        torch.set_rng_state(mine["torch"].cpu())
        if runtime.device.type == "cuda" and "cuda" in mine:
            torch.cuda.set_rng_state(mine["cuda"].cpu(), runtime.device)
    else:
        torch.manual_seed(cfg.train.seed + runtime.rank + 1000 * (int(trainer_state["epoch"]) + 1))


@torch.no_grad()
def _validate(model, loader, collate, kind, runtime: Runtime) -> dict:
    if loader is None:
        return {}
    if kind == "slices":
        collate.set_epoch(0)  # the same validation slices every epoch, so losses compare
    model.eval()
    sums: dict[str, float] = {}
    for batch in loader:
        _accumulate(sums, model(batch.to(runtime.device, non_blocking=True)), len(batch))
    return _mean_metrics(sums, "val", runtime)


def _accumulate(sums: dict, out: dict, n: int) -> None:
    for k, v in out.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
    sums["__n"] = sums.get("__n", 0.0) + n


def _mean_metrics(sums: dict, prefix: str, runtime: Runtime) -> dict:
    """Row-weighted means over the epoch, over all workers."""
    if not sums:
        return {}
    sums = _reduce(sums, runtime)
    n = max(sums.pop("__n"), 1.0)
    return {f"{prefix}_{k}": v / n for k, v in sums.items()}
