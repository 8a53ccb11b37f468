"""Run configuration: a frozen dataclass tree, loaded from YAML or dicts, overridable with
``section.key=value``. Unknown keys and ill-typed values are errors that name the key.

Builders turn a Config into modules with flat arguments; model and loss classes never see it.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields

import yaml

from .errors import ConfigError  # noqa: F401  (re-exported)

METHODS = ("coles", "generative", "hybrid", "mlem", "supervised")

# The in-trial selection score's vocabulary (training/selection.py computes it). One name per knob,
# in a run config and in a search space's sweep block alike: `selection` (what ranks: probe |
# rankme | val_loss), `selection_every` (score every N epochs), `selection_size` (sequences embedded).
SELECTION_METRICS = ("probe", "rankme", "val_loss")
# What a run reports for each selection metric (the name Tune, ASHA and Optuna compare), and its direction.
REPORTED = {"probe": ("probe_score", "max"), "rankme": ("rankme", "max"), "val_loss": ("val_loss", "min")}
SELECTION_SIZE = 4096  # training-pool sequences embedded for the score


@dataclass(frozen=True)
class DataConfig:
    path: str = ""  # prepared data set directory
    batch_size: int = 64  # sequences per worker per step; CoLES batches hold batch_size * slices rows
    max_len: int = 0  # full-sequence batches keep the last max_len events (0: the data set's max_len)
    slices: int = 5  # CoLES views per sequence (k)
    slice_min: int = 25  # CoLES slice length bounds (capped at the sequence length)
    slice_max: int = 200

    def __post_init__(self):
        _positive(self, "batch_size", "slices", "slice_min", "slice_max")
        if self.slice_min > self.slice_max:
            raise ConfigError(f"data.slice_min ({self.slice_min}) is larger than data.slice_max ({self.slice_max})")
        if self.max_len < 0:
            raise ConfigError("data.max_len must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "gru"  # gru | transformer
    hidden: int = 256  # sequence embedding size
    layers: int = 1
    heads: int = 4  # transformer encoder only
    pooling: str = "last"  # transformer encoder only: last | mean
    cat_emb_dim: int = 16  # per categorical field
    num_emb_dim: int = 4  # per numeric field
    time_encoding: str = "log1p"  # how delta t enters the model: log1p | raw | none
    dropout: float = 0.0  # inside the encoder and the decoder
    embedding_norm: bool | None = None  # LayerNorm + dropout on the embedding; None: on for generative/hybrid/mlem
    embedding_dropout: float = 0.1
    decoder_width: int = 128
    decoder_layers: int = 3
    decoder_heads: int = 2
    decoder_ff: int = 256

    def __post_init__(self):
        _choice(self, "encoder", ("gru", "transformer"))
        _choice(self, "pooling", ("last", "mean"))
        _choice(self, "time_encoding", ("log1p", "raw", "none"))
        _positive(self, "hidden", "layers", "heads", "cat_emb_dim", "num_emb_dim",
                  "decoder_width", "decoder_layers", "decoder_heads", "decoder_ff")
        if self.encoder == "transformer" and self.hidden % self.heads:
            raise ConfigError(f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})")
        if self.decoder_width % self.decoder_heads:
            raise ConfigError(
                f"model.decoder_width ({self.decoder_width}) must be divisible by model.decoder_heads ({self.decoder_heads})"
            )
        for name in ("dropout", "embedding_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1)")


@dataclass(frozen=True)
class ObjectiveConfig:
    method: str = "coles"  # coles | generative | hybrid | mlem | supervised
    contrastive_loss: str = "margin"  # margin | infonce (CoLES and hybrid)
    margin: float = 0.5  # margin loss; pytorch-lifestream 0.5, tuned 0.87 in the MLEM code
    neg_count: int = 5  # hardest negatives per anchor in the margin loss
    tau: float = 0.05  # InfoNCE temperature
    projector: str = "identity"  # identity | linear | mlp, used inside the contrastive loss only
    projector_width: int = 64
    w_num: float = 1.0  # reconstruction weights (docs/method.md#reconstruction-loss)
    w_cat: float = 1.0
    w_time: float = 10.0
    w_l1: float = 1e-3
    w_rec: float = 1.0  # hybrid and MLEM: weight of the reconstruction loss
    w_con: float = 1.0  # hybrid: weight of the contrastive loss
    w_align: float = 10.0  # MLEM: weight of the SigLIP alignment loss
    siglip_t_init: float = math.log(10.0)
    siglip_b_init: float = -10.0
    teacher: str = ""  # MLEM: the frozen CoLES checkpoint directory

    def __post_init__(self):
        _choice(self, "method", METHODS)
        _choice(self, "contrastive_loss", ("margin", "infonce"))
        _choice(self, "projector", ("identity", "linear", "mlp"))
        _positive(self, "tau", "neg_count", "projector_width")
        for name in ("margin", "w_num", "w_cat", "w_time", "w_l1", "w_rec", "w_con", "w_align"):
            if getattr(self, name) < 0:
                raise ConfigError(f"objective.{name} must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0  # decoupled (AdamW); never applied to SigLIP t and b
    schedule: str = "constant"  # constant | cosine (to 0 at the last step)
    warmup_steps: int = 0  # linear warm-up from 0
    clip_grad: float = 1.0  # max gradient norm; 0 turns clipping off

    def __post_init__(self):
        _choice(self, "schedule", ("constant", "cosine"))
        _positive(self, "lr")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.clip_grad < 0:
            raise ConfigError("optim.weight_decay, optim.warmup_steps and optim.clip_grad must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    steps_per_epoch: int = 0  # 0: a full pass over the training split
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    budget_steps: int = 0  # stop after this many optimizer steps in all (0: no limit); sequences seen =
    # budget_steps x data.batch_size x workers. The budget that compares methods: deterministic.
    budget_cpu_s: float = 0.0  # a safety cap in process CPU time (0: none); depends on machine load,
    # so no comparison of methods may use it
    selection: str = "none"  # in-trial selection score each epoch: none | probe | rankme (training/selection.py)
    selection_every: int = 1  # score every N epochs (and the last); only scored epochs carry a checkpoint
    selection_size: int = SELECTION_SIZE  # at most this many training-pool sequences are embedded for the score
    # Validation sequences each epoch (0: the whole validation split; a supervised run: its labelled
    # rows): a subset fixed by the data set alone (seeded from its schema fingerprint, not from
    # train.seed), so every epoch, every trial of a sweep and a resumed run validate on the same
    # rows, whatever their seeds. val_loss picks best/ and may rank a sweep; 4,096 is enough to rank
    # by: the subset's mean has a standard error of 1/64 of the per-sequence spread, and since every
    # trial is scored on the same rows, what two trials' difference sees is only the smaller part of
    # it that differs between them. Measured on the 200k set (benchmarks/val_subset.py, CoLES, 40
    # steps, model.hidden 64 vs 128): three disjoint 4,096-subsets' val_loss spread by std 0.69 and
    # 0.36 against a gap of 20.9 between the configs (0.033 of it), the same order on all three.
    val_size: int = 4096
    # Steps between reads of the loss from the device: the finiteness check and the metric sums
    # stay on it in between, so a GPU step never waits for the host (training/window.py). A
    # non-finite loss is still found at its exact step, at the next read.
    sync_every: int = 50
    # none | inductor: torch.compile the objective's forward (and so its backward), with dynamic
    # shapes (a batch pads to its longest row). Opt-in: the first steps pay the compilation (about a
    # minute on 2 CPU cores for a tiny transformer), which only long GPU runs earn back.
    compile: str = "none"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a gradient scaler); training/accel.py
    prefetch: int = 0  # batches built ahead of the step in a background thread (0: built in the step)
    loader_workers: int = 0  # DataLoader worker processes building batches (0: in the training process)

    def __post_init__(self):
        _positive(self, "epochs", "selection_every", "selection_size", "sync_every")
        _choice(self, "selection", ("none", "probe", "rankme"))
        if self.budget_cpu_s < 0 or self.budget_steps < 0:
            raise ConfigError("train.budget_cpu_s and train.budget_steps must be >= 0")
        _choice(self, "device", ("auto", "cpu", "cuda"))
        _choice(self, "precision", ("fp32", "bf16", "fp16"))
        _choice(self, "compile", ("none", "inductor"))
        if min(self.steps_per_epoch, self.threads, self.prefetch, self.loader_workers, self.val_size) < 0:
            raise ConfigError("train.steps_per_epoch, threads, prefetch, loader_workers and val_size must be >= 0")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def uses_embedding_norm(self) -> bool:
        if self.model.embedding_norm is not None:
            return self.model.embedding_norm
        return self.objective.method in ("generative", "hybrid", "mlem")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict | None) -> Config:
        d = d or {}
        if not isinstance(d, dict):
            raise ConfigError("a config must be a mapping of sections (data, model, objective, optim, train)")
        sections = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config section {sorted(unknown)[0]!r} (sections: {', '.join(sections)})")
        built = {}
        for name, f in sections.items():
            section_cls = f.default_factory
            built[name] = _build_section(section_cls, name, d.get(name) or {})
        return cls(**built)

    def replace(self, **flat: object) -> Config:
        """Copy with ``{"section.key": value}`` overrides applied (values type-checked)."""
        d = self.to_dict()
        for key, value in flat.items():
            section, _, name = key.partition(".")
            if not name or section not in d:
                raise ConfigError(f"unknown config key {key!r}: use section.key, e.g. optim.lr")
            if name not in d[section]:
                raise ConfigError(f"unknown config key {key!r} (keys of {section}: {', '.join(d[section])})")
            d[section][name] = value
        return Config.from_dict(d)


# Published per-method defaults (docs/method.md#training-defaults), applied under the user's own settings.
METHOD_DEFAULTS = {
    "coles": {"optim.lr": 1e-3, "optim.weight_decay": 0.0},
    "generative": {"optim.lr": 3e-3, "optim.weight_decay": 1e-3},
    # InfoNCE rather than the summed margin loss: objectives/hybrid.py says why.
    "hybrid": {"optim.lr": 3e-3, "optim.weight_decay": 1e-3, "objective.contrastive_loss": "infonce"},
    "mlem": {"optim.lr": 3e-3, "optim.weight_decay": 1e-3},
    "supervised": {"optim.lr": 1e-3, "optim.weight_decay": 0.0},
}


def make_config(method: str, overrides: dict | None = None, base: dict | None = None) -> Config:
    """Config for a method: its published defaults, then ``base`` (a nested dict, e.g. from YAML),
    then flat ``section.key`` overrides."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} (methods: {', '.join(METHODS)})")
    cfg = Config.from_dict(base).replace(**{"objective.method": method})
    nested = base or {}
    defaults = {k: v for k, v in METHOD_DEFAULTS[method].items()
                if k.split(".")[1] not in (nested.get(k.split(".")[0]) or {})}
    return cfg.replace(**defaults).replace(**(overrides or {}))


def parse_overrides(items: list[str] | None) -> dict:
    """``["optim.lr=3e-3", "model.encoder=gru"]`` -> {"optim.lr": 0.003, "model.encoder": "gru"}."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def _build_section(section_cls, section: str, values: dict):
    if not isinstance(values, dict):
        raise ConfigError(f"config section {section!r} must be a mapping")
    hints = typing.get_type_hints(section_cls)
    names = {f.name for f in fields(section_cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown config key '{section}.{sorted(unknown)[0]}' (keys: {', '.join(sorted(names))})")
    coerced = {k: _coerce(f"{section}.{k}", hints[k], v) for k, v in values.items()}
    return section_cls(**coerced)


def _coerce(key: str, hint, value):
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key {key!r} cannot be empty")
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        if not math.isfinite(value) or float(value) != int(value):
            raise ConfigError(f"config key {key!r} must be a finite integer, got {value!r}")
        return int(value)
    if base is float:
        # Text too ("nan", "inf", "1e400" from --set or a quoted YAML value) is converted first
        # and then checked: every way in meets the same finiteness check.
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"config key {key!r} must be finite, got {value!r}")
        return number
    if base is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be text, got {value!r}")
        return str(value)
    return value


def _positive(obj, *names):
    section = type(obj).__name__.replace("Config", "").lower()
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {getattr(obj, name)}")


def _choice(obj, name, options):
    section = type(obj).__name__.replace("Config", "").lower()
    if getattr(obj, name) not in options:
        raise ConfigError(f"{section}.{name} must be one of {', '.join(options)}, got {getattr(obj, name)!r}")
