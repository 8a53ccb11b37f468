"""The one training loop, written as a recipe (in the manner of torchtune's recipes): a local run,
a Ray Tune trial and every Ray Train worker call `train`; what differs between them comes in
through a `Runtime` (rank, device, model wrapping) and a `Reporter` (where metrics and checkpoints
go). This module imports no Ray.

The steps, in the order a run takes them:
- `preflight`: refuse what this data set or machine cannot run; open the data set and load the
  MLEM teacher, once, and hand both down (`RunInputs`);
- `Recipe(...)`: build the data (loaders, sampler, collators), the objective, the optimizer and
  its schedule, the precision, the selection scorer;
- `Recipe.resume`: put back a checkpoint's weights, optimizer, schedule, RNG and `TrainerState`;
- per epoch: `train_epoch`, `validate`, `end_epoch` (selection score and metrics),
  `checkpoint_and_report`.
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
from ..errors import CheckpointError, ConfigError, DataError, ResourceError
from .accel import Precision, prefetch, reuse_freed_memory
from .checkpoint import Checkpoint, check_schema, load_checkpoint, saved_encoder, save_checkpoint
from .window import StepWindow


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


@dataclass
class RunInputs:
    """What `preflight` opened, handed down so that nothing is opened or loaded twice."""

    seqs: EventSequences
    teacher: Checkpoint | None = None  # MLEM: the frozen CoLES teacher, checked against the data


@dataclass
class TrainerState:
    """The run's own progress, saved under these names in a checkpoint's trainer entry (beside the
    optimizer, schedule, gradient-scaler and RNG states) and read back on resume."""

    epoch: int = -1  # the last finished epoch
    best_val: float = math.inf  # the lowest validation loss so far (picks best/)
    cpu_spent: float = 0.0  # process CPU seconds of the whole run, across resumes (train.budget_cpu_s)
    selection: dict = field(default_factory=dict)  # the last scored epoch's selection values


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ResourceError("train.device=cuda but torch sees no GPU here; use train.device=auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def preflight(cfg: Config, seqs: EventSequences | None = None, local_device: bool = True) -> RunInputs:
    """Refuse, before anything is written or trained, a config this data set or machine cannot run:
    no GPU for train.device=cuda, a supervised run without targets, an MLEM run without a usable
    teacher, too few training sequences. `local_device`: the run uses this machine's device (a Ray
    Train worker gets its own). -> the opened data set and the loaded teacher."""
    if local_device:
        resolve_device(cfg.train.device)
    seqs = seqs or EventSequences.open(cfg.data.path)
    supervised = cfg.objective.method == "supervised"
    if supervised and (seqs.targets is None or not seqs.schema.task):
        raise DataError(f"--method supervised needs a data set with targets; {seqs.path} has none "
                        "(pass --targets to `mlem-ray data ingest`)")
    teacher = None
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
    return RunInputs(seqs, teacher)


def train(cfg: Config, reporter: Reporter, runtime: Runtime | None = None, resume: str | Path | None = None,
          on_batch: Callable | None = None, inputs: RunInputs | None = None) -> dict:
    """Train `cfg.train.epochs` epochs (continuing from `resume`, a checkpoint with trainer state).

    Each epoch: train, validate, score, write a checkpoint (rank 0), report. Returns the last
    metrics ({} when no epoch was left to train). `inputs`: what `preflight` opened (opened here
    when not given). `on_batch(epoch, step, batch) -> batch` is a hook for tests and fault injection."""
    runtime = runtime or Runtime(device=resolve_device(cfg.train.device))
    _set_up_process(cfg)
    recipe = Recipe(cfg, runtime, inputs or preflight(cfg, local_device=False))  # the runtime holds the device
    if resume:
        recipe.resume(resume)
    metrics: dict = {}
    for epoch in range(recipe.state.epoch + 1, cfg.train.epochs):
        if recipe.step_budget_spent():
            break
        started = time.perf_counter()
        train_metrics, out_of_budget = recipe.train_epoch(epoch, on_batch)
        val_metrics = recipe.validate()
        last = out_of_budget or epoch == cfg.train.epochs - 1
        metrics, scored = recipe.end_epoch(epoch, train_metrics, val_metrics, last, started)
        recipe.checkpoint_and_report(metrics, scored, reporter)
        if out_of_budget:
            break
    return metrics


def _set_up_process(cfg: Config) -> None:
    reuse_freed_memory()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)


class Recipe:
    """One run's training: built once, then driven epoch by epoch by `train`."""

    def __init__(self, cfg: Config, runtime: Runtime, inputs: RunInputs):
        self.cfg, self.runtime, self.seqs = cfg, runtime, inputs.seqs
        self.max_len = cfg.data.max_len or self.seqs.schema.max_len
        self.supervised = cfg.objective.method == "supervised"
        self.objective = build_training_objective(cfg, self.seqs, self.max_len, runtime.device, inputs.teacher)
        self.kind = self.objective.batch_kind
        self._build_data()
        self.model = _compiled(runtime.prepare_model(self.objective), cfg.train.compile)
        # Every rank built the same initial weights from train.seed; from here on randomness (dropout)
        # should differ between ranks, or they all drop the same units. Rank 0 keeps its stream, so a
        # single-process run is unchanged.
        if runtime.rank:
            torch.manual_seed(cfg.train.seed + runtime.rank)
        self._build_optimizer()
        self.precision = Precision(cfg.train.precision, runtime.device)
        self.state = TrainerState()
        self.cpu_start = time.process_time()
        self.scorer = self._build_scorer()

    # ---- building ----

    def _build_data(self) -> None:
        cfg, seqs = self.cfg, self.seqs
        self.train_rows = seqs.labelled("train") if self.supervised else seqs.indices("train")
        self.val_rows = validation_rows(seqs, self.supervised, cfg.train.val_size)
        self.train_loader, self.train_sampler, self.train_collate = _batches(
            seqs, self.train_rows, self.kind, cfg, self.runtime, True, self.max_len)
        self.val_loader, _, self.val_collate = (
            _batches(seqs, self.val_rows, self.kind, cfg, self.runtime, False, self.max_len)
            if len(self.val_rows) else (None, None, None))
        full = len(self.train_loader)
        self.steps_per_epoch = min(cfg.train.steps_per_epoch, full) if cfg.train.steps_per_epoch else full

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        # Decoupled weight decay (AdamW). With Adam's L2 term, a parameter whose loss gradient is near
        # zero is pulled to zero at about lr per step, because Adam normalises the decay term like any
        # gradient: on Pendulum the generative encoder's GRU weights fell from 0.044 to 0.0005 (mean |w|)
        # within two epochs and its embedding ended up worse than a random encoder's.
        self.optimizer = torch.optim.AdamW(_param_groups(self.objective, cfg.optim.weight_decay), lr=cfg.optim.lr)
        total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.budget_steps:
            total_steps = min(total_steps, cfg.train.budget_steps)  # a cosine schedule ends at the budget
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg, total_steps))

    def _build_scorer(self):
        if self.cfg.train.selection == "none" or not self.runtime.is_main:  # Tune sees rank 0's metrics only
            return None
        from .selection import SelectionScorer

        return SelectionScorer(self.seqs, self.cfg.train.selection, self.max_len, size=self.cfg.train.selection_size)

    # ---- resuming ----

    def resume(self, path) -> None:
        ckpt = load_checkpoint(path, map_location=self.runtime.device)
        check_schema(ckpt, self.seqs.schema)
        self.objective.load_state_dict(ckpt.state["objective"])
        saved = ckpt.state["trainer"]
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.precision.load_state_dict(saved.get("grad_scaler"))
        _restore_rng(saved, self.cfg, self.runtime)
        # The last scored epoch's values are kept, so a resumed trial reports them too; the CPU
        # budget counts the run, not this process.
        self.state = TrainerState(epoch=int(saved["epoch"]), best_val=float(saved["best_val"]),
                                  cpu_spent=float(saved.get("cpu_spent", 0.0)),
                                  selection=dict(saved.get("selection", {})))
        self.cpu_start = time.process_time() - self.state.cpu_spent

    # ---- one epoch ----

    def step_budget_spent(self) -> bool:
        # The scheduler counts optimizer steps and is restored on resume, so the step budget is too.
        budget = self.cfg.train.budget_steps
        return bool(budget) and self.scheduler.last_epoch >= budget

    def _cpu_budget_spent(self, window: StepWindow) -> bool:
        budget = self.cfg.train.budget_cpu_s
        if not budget:
            return False
        if self.runtime.world_size > 1 and window.steps:
            return False  # the all-reduce below is a host sync: across workers, at window starts only
        over = {"over": float(time.process_time() - self.cpu_start > budget)}
        return _reduce(over, self.runtime)["over"] > 0  # every rank stops at the same step

    def train_epoch(self, epoch: int, on_batch: Callable | None) -> tuple[dict, bool]:
        """-> (the epoch's mean training metrics, whether a budget ended the run in this epoch)."""
        cfg, runtime = self.cfg, self.runtime
        self.train_sampler.set_epoch(epoch)
        if self.kind == "slices":
            self.train_collate.set_epoch(epoch)
        self.model.train()
        window = StepWindow(cfg.train.sync_every, runtime.device, runtime.world_size)
        explain = self._non_finite_hint(self.scheduler.last_epoch)
        out_of_budget = False
        # The prefetch generator is closed (its thread joined) when the epoch's loop ends.
        source = prefetch(self.train_loader, cfg.train.prefetch)
        batches = _progress(source, self.steps_per_epoch, epoch, runtime)
        try:
            for step, batch in enumerate(batches):
                if step >= self.steps_per_epoch:
                    break
                if self._cpu_budget_spent(window):
                    out_of_budget = True  # finish this epoch here: validate, checkpoint, stop
                    break
                if on_batch is not None:
                    batch = on_batch(epoch, step, batch)
                self._train_step(batch, window)
                if window.full:
                    window.check(epoch, explain)
                if self.step_budget_spent():
                    out_of_budget = True  # the same step on every rank: all count the same steps
                    break
            window.check(epoch, explain)  # the epoch's last steps, before anything is checkpointed
        finally:
            if batches is not source:
                batches.close()
            source.close()  # join the prefetch thread before the next epoch moves the collator on
        return _mean_metrics(window.totals(), "train", runtime), out_of_budget

    def _train_step(self, batch, window: StepWindow) -> None:
        """Forward, backward, optimizer and schedule steps; nothing here reads the device (the
        window keeps the loss parts and their finiteness on it)."""
        if self.scheduler.last_epoch == 0:
            self._first_batch = batch  # host-side, for the message should the very first loss be non-finite
        rows = len(batch)
        batch = batch.to(self.runtime.device, non_blocking=True)
        with self.precision.autocast():
            out = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(out["loss"], self.optimizer, self.objective.parameters(), self.cfg.optim.clip_grad)
        self.scheduler.step()
        window.add(out, rows)

    def _non_finite_hint(self, steps_before_epoch: int):
        """-> explain(step): what could make the loss at that step of this epoch non-finite. At the
        run's first step no update has happened yet, so the cause is in the inputs or the loss's
        settings, and the first batch is searched for the inputs that could be it."""
        def explain(step: int) -> str:
            if steps_before_epoch + step == 0 and getattr(self, "_first_batch", None) is not None:
                return _first_step_suspects(self._first_batch, self.seqs.schema, self.cfg)
            return "Lower optim.lr, check the data for extreme values, or keep optim.clip_grad on"

        return explain

    # ---- validation ----

    @torch.no_grad()
    def validate(self) -> dict:
        if self.val_loader is None:
            return {}
        if self.kind == "slices":
            self.val_collate.set_epoch(0)  # the same validation slices every epoch, so losses compare
        self.model.eval()
        sums: dict[str, float] = {}
        with self.precision.autocast():
            for batch in self.val_loader:
                _accumulate(sums, self.model(batch.to(self.runtime.device, non_blocking=True)), len(batch))
        return _mean_metrics(sums, "val", self.runtime)

    # ---- the epoch's record and checkpoint ----

    def end_epoch(self, epoch: int, train_metrics: dict, val_metrics: dict, last: bool, started: float
                  ) -> tuple[dict, bool]:
        """Update the trainer state, score the encoder when due -> (the epoch's metrics, scored).
        Between scored epochs the selection values are the last scored epoch's; a checkpoint there
        would be ranked by a score that is not its own, so only scored epochs carry one."""
        cfg, state = self.cfg, self.state
        val_loss = val_metrics.get("val_loss", train_metrics.get("train_loss", math.nan))
        improved = val_loss < state.best_val
        state.best_val = min(state.best_val, val_loss)
        state.epoch = epoch
        scored = cfg.train.selection == "none" or last or (epoch + 1) % cfg.train.selection_every == 0
        if self.scorer is not None and scored:
            state.selection = {**self.scorer(self.objective.encoder, self.runtime.device), "selection_epoch": epoch}
        metrics = {"epoch": epoch, "val_loss": val_loss, "best_val_loss": state.best_val,
                   "lr": self.scheduler.get_last_lr()[0], "steps": self.scheduler.last_epoch,
                   "epoch_seconds": time.perf_counter() - started, **train_metrics, **val_metrics,
                   "is_best": bool(improved), **state.selection}
        return metrics, scored

    def checkpoint_and_report(self, metrics: dict, scored: bool, reporter: Reporter) -> None:
        rng = _rng_states(self.runtime) if scored else None  # every rank's, gathered on every rank
        checkpoint_dir = None
        if self.runtime.is_main and scored:
            checkpoint_dir = Path(tempfile.mkdtemp(prefix="mlem_ray_ckpt_")) / "checkpoint"
        try:
            if checkpoint_dir is not None:
                self.state.cpu_spent = time.process_time() - self.cpu_start
                save_checkpoint(checkpoint_dir, self.cfg, self.seqs.schema, self.objective.encoder.state_dict(),
                                self.objective.state_dict(), self._trainer_entry(rng), metrics)
            reporter.report(metrics, checkpoint_dir)
        finally:  # the reporter has copied or moved it; nothing is left in the temp dir, even on error
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir.parent, ignore_errors=True)

    def _trainer_entry(self, rng: list) -> dict:
        """model.pt's "trainer" entry: the TrainerState's names, the optimizer, schedule,
        gradient-scaler and RNG states, and the max_len the encoder was built for."""
        s = self.state
        return {"epoch": s.epoch, "best_val": s.best_val, "cpu_spent": s.cpu_spent, "selection": s.selection,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "grad_scaler": self.precision.state_dict(), "torch_rng": torch.get_rng_state(), "rng": rng,
                "max_len": self.max_len}


# ---- the pieces the recipe is built from ----


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
        # Lazily: an epoch of train.steps_per_epoch steps reads only its own rows, not a Python
        # list of the whole split (a million sequences: 0.1 s per epoch for nothing).
        return map(int, order[self.rank :: self.world][:per_rank])

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


def validation_rows(seqs: EventSequences, labelled: bool, size: int) -> np.ndarray:
    """The validation split's rows (its labelled ones for a supervised run), or a subset of `size`
    of them (sorted; all of them when size is 0 or the split is smaller). The subset depends on the
    data set alone (its schema fingerprint seeds it), not on train.seed: every epoch, every trial
    of a sweep and a resumed run validate on the same rows."""
    rows = seqs.labelled("val") if labelled else seqs.indices("val")
    if not size or len(rows) <= size:
        return rows
    rng = np.random.default_rng([int(seqs.schema.fingerprint(), 16), len(rows)])
    return np.sort(rng.choice(rows, size=size, replace=False))


def build_training_objective(cfg: Config, seqs: EventSequences, max_len: int, device,
                             teacher: Checkpoint | None = None) -> nn.Module:
    """The objective (encoder and loss) for `cfg`; an MLEM run's frozen encoder is built from
    `teacher` (what preflight loaded), or loaded from objective.teacher when not given."""
    from ..objectives import build_objective

    teacher_encoder = None
    if cfg.objective.method == "mlem":  # preflight() has checked the teacher
        teacher_encoder = saved_encoder(teacher or load_checkpoint(cfg.objective.teacher), device)
    train_targets = seqs.targets[seqs.indices("train")] if seqs.targets is not None else None
    return build_objective(cfg, seqs.schema, max_len, teacher_encoder, train_targets).to(device)


# train.compile -> torch.compile backend (tests swap in a backend that compiles in seconds on CPU).
COMPILE_BACKENDS = {"inductor": "inductor"}


def _compiled(model: nn.Module, how: str) -> nn.Module:
    """The module the steps call: `model` itself, or compiled. Weights and checkpoints stay the
    objective's own (the compiled wrapper shares its parameters)."""
    if how == "none":
        return model
    return torch.compile(model, backend=COMPILE_BACKENDS[how], dynamic=True)


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


def _first_step_suspects(batch, schema, cfg: Config) -> str:
    """What in the first batch (or the config) can make the very first loss non-finite."""
    found = []
    for j, f in enumerate(schema.numeric):
        present = batch.num[..., j][batch.num_mask[..., j]]
        if present.numel() and not torch.isfinite(present).all():
            found.append(f"non-finite values in numeric field {f.name!r}")
        elif present.numel() and float(present.abs().max()) > 1e4:
            found.append(f"extreme values in numeric field {f.name!r} (up to {float(present.abs().max()):.3g} "
                         "robust-scaled units)")
    gaps = batch.dt[batch.mask]
    if gaps.numel() and not torch.isfinite(gaps).all():
        found.append("non-finite time gaps")
    elif gaps.numel() and cfg.model.time_encoding == "raw" and float(gaps.abs().max()) > 1e4:
        found.append(f"time gaps up to {float(gaps.abs().max()):.3g} {schema.time_unit} with model.time_encoding=raw")
    if found:
        return ("It was the run's first step, before any update, so not the learning rate: the first batch has "
                + "; ".join(found) + " (clip or drop them before `mlem-ray data ingest`)")
    return ("It was the run's first step, before any update, so not the learning rate, and the first batch holds "
            "no extreme input: check the loss settings (objective.margin, tau, w_*, siglip_*)")


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
