"""Search-space files: which run-config keys a sweep varies, how, and how the sweep itself runs.

A search space is a YAML file. One stage::

    method: coles            # coles | generative | hybrid | mlem | supervised
    sweep:                   # all optional; defaults are those of StageSweep
      trials: 20             # Optuna trials
      max_concurrent: 0      # trials at once; 0: derived from cluster resources by the sweep driver
      scheduler: asha        # asha | none
      grace_period: 1        # epochs before ASHA may stop a trial (<= epochs)
      reduction_factor: 2
      epochs: 10             # max epochs per trial (sets train.epochs)
      selection: probe       # probe | rankme | val_loss; left out: probe with targets, else rankme
      selection_every: 1     # in-trial score every N epochs (and at the last)
      selection_size: 4096   # training-pool sequences embedded for the in-trial score
      seed: 0                # seeds the TPE sampler
      finalists: 3           # best trials by the in-trial score, among which the teacher is
                             # the best downstream (<= trials)
      repeats: 1             # seeds per trial (train.seed, +1, ...): the objective is then the
                             # robust in-trial score (sweep/repeats.py)
      cost: ""               # params | embed_time: a second objective, minimised (sweep/cost.py);
                             # the stage is then multi-objective (Pareto front, sweep/pareto.py)
    params:                  # run-config keys (section.key, see mlem_ray/config.py)
      optim.lr: {type: log_float, low: 1.0e-4, high: 1.0e-2}
      objective.margin: {type: float, low: 0.3, high: 1.0}          # optional step
      model.hidden: {type: int, low: 64, high: 512, log: true}       # optional step (not with log)
      objective.contrastive_loss: {type: categorical, choices: [margin, infonce]}
      model.layers: 1        # a bare value is a constant

``type`` is one of ``float`` (``log: true`` allowed), ``log_float``, ``int`` (``log`` or ``step``)
and ``categorical``. A float distribution needs a float config key; an int one an int or float
key. Write floats in exponent form with a dot (``1.0e-4``): YAML reads ``1e-4`` as text (it is
accepted and converted here all the same).

The in-trial score ranks trials everywhere in a sweep (training/selection.py): ``val_loss`` is
refused for a stage that sweeps a key that rescales the loss (``LOSS_SCALE_KEYS``, any
``objective.w_*``), since the sampler would then learn to shrink the loss rather than improve
the embedding.

The MLEM pipeline is a two-stage file: stage 1 sweeps CoLES teachers, stage 2 sweeps MLEM against
the best teacher; ``compare`` optionally adds stages swept the same way for comparison. The
pipeline sets ``objective.teacher`` of every stage-2 trial from the chosen teacher
(``FROM_TEACHER``), so the mlem stage must not set it; the MLEM encoder's own size is swept freely
(a linear map meets the teacher's width)::

    stages:
      teacher: {method: coles, sweep: {...}, params: {...}}
      mlem:    {method: mlem,  sweep: {...}, params: {...}}
      compare: [{method: generative, ...}, {method: hybrid, ...}]   # optional

A one-stage file loads as one stage named after its method; a two-stage file as the stages
``teacher``, ``mlem`` and ``compare_<method>``.

Every value is checked against the run config when the file is loaded: each constant, each
bound (and, for an int, the step after ``low``, which catches "must be divisible by" rules) and
each choice is applied with ``make_config(method).replace(...)`` together with the other
parameters all at their low ends and all at their high ends. So cross-field rules hold at the
corners of the space; e.g. ``data.slice_min`` and ``data.slice_max`` need ranges that do not
overlap, and a ``model.encoder`` choice of ``transformer`` needs ``model.hidden`` divisible by
``model.heads`` (give hidden a ``step``; a log-scale int has step 1). Every bad file is refused
with a one-line ``SpaceError`` naming the file and the key. ``train.epochs`` is set by
``sweep.epochs`` and ``objective.method`` by ``method``; neither may appear under ``params``.
"""
from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass, field

import optuna
import yaml

from mlem_ray.config import METHODS, REPORTED, SELECTION_METRICS, SELECTION_SIZE, Config, ConfigError, make_config
from ..errors import SpaceError  # noqa: F401  (re-exported)
from .cost import COST_METRICS, COSTS
from .repeats import robust_name

PARAM_TYPES = ("float", "log_float", "int", "categorical")
_DIST_KEYS = ("type", "low", "high", "log", "step", "choices")
_STAGE_KEYS = ("method", "sweep", "params")
_TWO_STAGE_KEYS = ("teacher", "mlem", "compare")
# Set by the file's structure, not by params.
_RESERVED = {
    "train.epochs": "set the epoch budget with sweep.epochs",
    "objective.method": "the method is set by the stage's 'method'",
    "train.selection": "set the in-trial score with sweep.selection",
    "train.selection_every": "set it with sweep.selection_every",
    "train.selection_size": "set it with sweep.selection_size",
}
# The sweep block's keys before they took the run config's names (train.selection*): refused with
# the new name, so that one knob has one name everywhere.
RENAMED = {"metric": "selection", "eval_every": "selection_every", "probe_size": "selection_size"}

# In a two-stage file the pipeline sets these on every stage-2 (mlem) trial from the chosen teacher;
# the file must not.
FROM_TEACHER = {
    "objective.teacher": "the teacher checkpoint comes from stage 1",
}


# Keys that change the scale of the training loss, or the task its validation value measures: a
# stage that sweeps one of them cannot rank its trials by val_loss (docs/method.md#what-a-sweep-varies-and-what-ranks-trials).
LOSS_SCALE_KEYS = {
    "objective.margin", "objective.contrastive_loss", "objective.tau", "objective.neg_count",
    "objective.siglip_t_init", "objective.siglip_b_init", "objective.projector",
    "data.slice_min", "data.slice_max", "data.slices", "data.batch_size", "data.max_len",
}


def rescales_loss(key: str) -> bool:
    return key in LOSS_SCALE_KEYS or key.startswith("objective.w_")


@dataclass(frozen=True)
class StageSweep:
    """How one stage is swept (the ``sweep:`` block of a stage in a search-space file)."""

    trials: int = 20  # Optuna trials
    max_concurrent: int = 0  # trials at once; 0: derived from cluster resources by the driver
    scheduler: str = "asha"  # asha | none
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: int = 2  # ASHA keeps 1/reduction_factor of the trials at each rung
    epochs: int = 10  # max epochs per trial (sets train.epochs)
    # What ranks trials (sampler, ASHA, the checkpoint kept per trial, the finalists): probe | rankme |
    # val_loss (training/selection.py); "" = probe when the data set has targets, else rankme.
    selection: str = ""
    mode: str = ""  # derived from selection (probe, rankme: max; val_loss: min); may be given if it agrees
    selection_every: int = 1  # compute the in-trial score every N epochs (and at the last)
    selection_size: int = SELECTION_SIZE  # training-pool sequences embedded for the in-trial score
    seed: int = 0  # sampler seed
    finalists: int = 3  # best trials (by the in-trial score) among which the teacher is chosen downstream
    search: str = "tpe"  # tpe (multivariate) | random (the baseline of benchmarks/sweep_efficiency.py)
    # Seeds per trial: one config trained with `repeats` seeds in lockstep inside the trial; what
    # Tune, ASHA and Optuna compare is then mean - std over the seeds (mean + std for a min metric),
    # reported as "<metric>_robust" (sweep/repeats.py).
    repeats: int = 1
    # A second objective, measured in the trial and minimised beside the metric: "params" (the
    # encoder's parameter count) or "embed_time" (seconds to embed 1,000 sequences); "" = none.
    cost: str = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            want = str if f.type in ("str", str) else int
            if isinstance(value, bool) or not isinstance(value, want):
                kind = "text" if want is str else "an integer"
                raise SpaceError(f"sweep.{f.name} must be {kind}, got {value!r}")
        for name, low in (("trials", 1), ("grace_period", 1), ("reduction_factor", 2), ("epochs", 1),
                          ("finalists", 1), ("max_concurrent", 0), ("selection_every", 1), ("selection_size", 10),
                          ("repeats", 1)):
            if getattr(self, name) < low:
                raise SpaceError(f"sweep.{name} must be >= {low}, got {getattr(self, name)}")
        if self.search not in ("tpe", "random"):
            raise SpaceError(f"sweep.search must be tpe or random, got {self.search!r}")
        if self.cost not in ("",) + COSTS:
            raise SpaceError(f"sweep.cost must be one of {', '.join(COSTS)} (or left out), got {self.cost!r}")
        if self.scheduler not in ("asha", "none"):
            raise SpaceError(f"sweep.scheduler must be asha or none, got {self.scheduler!r}")
        if self.selection not in ("",) + SELECTION_METRICS:
            raise SpaceError(f"sweep.selection must be one of {', '.join(SELECTION_METRICS)} (or left out: probe "
                             f"when the data has targets, else rankme), got {self.selection!r}")
        if self.mode not in ("", "min", "max"):
            raise SpaceError(f"sweep.mode must be min or max, got {self.mode!r}")
        if self.selection and self.mode and self.mode != REPORTED[self.selection][1]:
            raise SpaceError(f"sweep.mode {self.mode!r} contradicts sweep.selection {self.selection!r} "
                             f"({REPORTED[self.selection][1]}); leave sweep.mode out")
        if self.selection and not self.mode:
            object.__setattr__(self, "mode", REPORTED[self.selection][1])
        if self.grace_period > self.epochs:
            raise SpaceError(f"sweep.grace_period ({self.grace_period}) exceeds sweep.epochs ({self.epochs})")
        if self.finalists > self.trials:
            raise SpaceError(f"sweep.finalists ({self.finalists}) exceeds sweep.trials ({self.trials})")

    def resolved(self, default_metric: str) -> StageSweep:
        """With the metric chosen (``default_metric`` where the file left it out) and its mode."""
        metric = self.selection or default_metric
        return dataclasses.replace(self, selection=metric, mode=REPORTED[metric][1])

    @property
    def base_metric(self) -> str:
        """The name one training run reports the in-trial score under (probe_score, rankme, val_loss)."""
        if not self.selection:
            raise SpaceError("sweep.selection is not resolved yet (StageSweep.resolved)")
        return REPORTED[self.selection][0]

    @property
    def reported_metric(self) -> str:
        """The name the trials report the quality objective under (what Tune, ASHA and Optuna
        compare): the base metric, or with repeats its robust aggregate over the seeds."""
        return robust_name(self.base_metric) if self.repeats > 1 else self.base_metric

    @property
    def objectives(self) -> tuple[list[str], list[str]]:
        """(metrics, modes) the sampler optimises: the quality objective, then the cost if any."""
        if not self.cost:
            return [self.reported_metric], [self.mode]
        return [self.reported_metric, COST_METRICS[self.cost]], [self.mode, "min"]


@dataclass(frozen=True)
class ParamSpec:
    """One swept config key: a float, int or categorical distribution."""

    type: str  # float | log_float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def probes(self) -> list:
        """Values checked against the config at load time."""
        if self.type == "categorical":
            return list(self.choices)
        values = [self.low, self.high]
        if self.type == "int":
            second = self.low + (self.step or 1)
            if second < self.high:
                values.insert(1, second)
        return values

    def corner(self, high: bool):
        if self.type == "categorical":
            return self.choices[-1] if high else self.choices[0]
        return self.high if high else self.low

    def cast(self, value):
        """A sampled value as a plain Python scalar of the right kind."""
        if self.type == "int":
            return int(value)
        if self.type in ("float", "log_float"):
            return float(value)
        return value


@dataclass(frozen=True)
class StageSpace:
    method: str
    sweep: StageSweep = field(default_factory=StageSweep)
    params: dict[str, ParamSpec] = field(default_factory=dict)  # distributions only
    constants: dict[str, object] = field(default_factory=dict)

    def optuna_space(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {key: spec.distribution() for key, spec in self.params.items()}

    def overrides(self, sampled: dict, fixed: dict | None = None) -> dict:
        """Flat ``section.key -> value`` overrides for one trial: constants, then the sampled params,
        then ``train.epochs`` and the in-trial score from the sweep settings, then ``fixed`` (what the
        pipeline sets: data path, teacher, threads). Other ``section.key`` entries of ``sampled``
        (e.g. ``train.seed`` of a re-seeded run) are applied after the params; keys starting with
        ``_`` are Tune's own. A missing param is an error."""
        missing = [key for key in self.params if key not in sampled]
        if missing:
            raise SpaceError(f"sample for stage {self.method!r} lacks param {missing[0]!r}")
        out = dict(self.constants)
        out.update({key: spec.cast(sampled[key]) for key, spec in self.params.items()})
        out.update({k: v for k, v in sampled.items() if k not in self.params and not k.startswith("_")})
        out["train.epochs"] = self.sweep.epochs
        if self.sweep.selection in ("probe", "rankme"):
            out.update({"train.selection": self.sweep.selection, "train.selection_every": self.sweep.selection_every,
                        "train.selection_size": self.sweep.selection_size})
        out.update(fixed or {})
        return out

    def config(self, sampled: dict, fixed: dict | None = None, base: dict | None = None) -> Config:
        """The run config of one trial: the one path from a sampled Tune config to a Config, used by
        the trials themselves (``base``: a nested dict applied under the overrides)."""
        return make_config(self.method, self.overrides(sampled, fixed), base=base)

    def resolved(self, default_metric: str) -> StageSpace:
        """This stage with its selection metric chosen (see StageSweep.resolved)."""
        return dataclasses.replace(self, sweep=self.sweep.resolved(default_metric))

    def searcher(self, seed: int | None = None, storage=None, study_name: str | None = None,
                 points_to_evaluate: list[dict] | None = None):
        """A seeded ``OptunaSearch`` over this stage's params: multivariate TPE, or random sampling.
        `storage`/`study_name`: where the study lives (sweep/optuna_storage.py); default in memory.
        With a `sweep.cost` it optimises both objectives (a metric list and a mode list): Optuna's
        TPE samples multi-objective studies itself (MOTPE). `points_to_evaluate`: configs Optuna
        runs first, in order (`study.enqueue_trial`; the warm start, sweep/warm_start.py)."""
        from ray.tune.search.optuna import OptunaSearch

        seed = self.sweep.seed if seed is None else seed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = (optuna.samplers.TPESampler(seed=seed, multivariate=True) if self.sweep.search == "tpe"
                       else optuna.samplers.RandomSampler(seed=seed))
        metrics, modes = self.sweep.objectives
        metric, mode = (metrics, modes) if len(metrics) > 1 else (metrics[0], modes[0])
        return OptunaSearch(space=self.optuna_space(), metric=metric, mode=mode, sampler=sampler, storage=storage,
                            study_name=study_name, points_to_evaluate=points_to_evaluate or None)


@dataclass(frozen=True)
class SearchSpace:
    stages: dict[str, StageSpace]
    path: str = ""

    @property
    def is_two_stage(self) -> bool:
        return "teacher" in self.stages and "mlem" in self.stages

    @classmethod
    def load(cls, path) -> SearchSpace:
        from .. import storage

        path = str(path)  # a local path or a storage URI
        try:
            text = storage.read_text(path)
        except FileNotFoundError:
            raise SpaceError(f"{path}: no such search-space file") from None
        except (OSError, storage.StorageError) as e:
            raise SpaceError(f"{path}: cannot read it ({storage.explain(e)})") from None
        except UnicodeDecodeError:
            raise SpaceError(f"{path}: not a text file") from None
        return cls.from_text(text, path)

    @classmethod
    def from_text(cls, text: str, path: str = "<text>") -> SearchSpace:
        try:
            doc = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as e:
            raise SpaceError(f"{path}: {_yaml_message(e)}") from None
        return cls.from_dict(doc, path)

    @classmethod
    def from_dict(cls, doc, path: str = "<dict>") -> SearchSpace:
        if doc is None:
            raise SpaceError(f"{path}: empty search-space file (needs 'method' or 'stages')")
        if not isinstance(doc, dict):
            raise SpaceError(f"{path}: a search space must be a mapping with 'method' or 'stages'")
        if "stages" in doc:
            extra = [k for k in doc if k != "stages"]
            if extra:
                raise SpaceError(f"{path}: unknown top-level key {extra[0]!r} in a two-stage file "
                                 "(only 'stages'; each stage has its own method, sweep and params)")
            return cls(_two_stage(doc["stages"], path), path)
        stage = _stage(doc, path, "", top_level=True)
        return cls({stage.method: stage}, path)


def shipped() -> list[str]:
    """Names of the search spaces that ship inside the package (mlem_ray/search_spaces/*.yaml)."""
    return sorted(p.name.removesuffix(".yaml") for p in _shipped_dir().iterdir() if p.name.endswith(".yaml"))


def _shipped_dir():
    from importlib.resources import files

    return files("mlem_ray") / "search_spaces"


def load_space(arg) -> SearchSpace:
    """The search space that `--space` names: a file (a path, or a storage URI), else a shipped
    one by name (`quick`, `mlem.yaml`). Shipped spaces are package data read through
    importlib.resources, so an installed package finds them from any working directory."""
    from .. import storage

    text = str(arg)
    if storage.is_location(text):
        return SearchSpace.load(text)
    name = text.removesuffix(".yaml")
    if name not in shipped():
        raise SpaceError(f"--space {text}: no such file, and not a shipped search space "
                         f"(shipped: {', '.join(shipped())})")
    return SearchSpace.from_text((_shipped_dir() / f"{name}.yaml").read_text(encoding="utf-8"), f"{name}.yaml")


def space_text(arg) -> str:
    """The YAML text of the space `--space` names (copied into the sweep dir as space.yaml)."""
    from .. import storage

    text = str(arg)
    if storage.is_location(text):
        return storage.read_text(text)
    return (_shipped_dir() / f"{text.removesuffix('.yaml')}.yaml").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# parsing


def _two_stage(stages, path: str) -> dict[str, StageSpace]:
    if not isinstance(stages, dict):
        raise SpaceError(f"{path}: stages must be a mapping with 'teacher' and 'mlem' (and optional 'compare')")
    for key in stages:
        if key not in _TWO_STAGE_KEYS:
            raise SpaceError(f"{path}: unknown key 'stages.{key}' (stages: teacher, mlem, compare)")
    for key in ("teacher", "mlem"):
        if key not in stages:
            raise SpaceError(f"{path}: a two-stage file needs 'stages.{key}'")
    teacher = _stage(stages["teacher"], path, "stages.teacher.")
    if teacher.method != "coles":
        raise SpaceError(f"{path}: stages.teacher.method must be coles (the MLEM teacher), got {teacher.method!r}")
    mlem = _stage(stages["mlem"], path, "stages.mlem.")
    if mlem.method != "mlem":
        raise SpaceError(f"{path}: stages.mlem.method must be mlem, got {mlem.method!r}")
    for key in FROM_TEACHER:
        if key in mlem.params or key in mlem.constants:
            raise SpaceError(f"{path}: stages.mlem.params.{key}: {FROM_TEACHER[key]}; remove it "
                             "(or use a one-stage mlem file)")
    out = {"teacher": teacher, "mlem": mlem}
    compare = stages.get("compare") or []
    if not isinstance(compare, list):
        raise SpaceError(f"{path}: stages.compare must be a list of stages")
    for i, raw in enumerate(compare):
        stage = _stage(raw, path, f"stages.compare[{i}].")
        name = f"compare_{stage.method}"
        if name in out:
            raise SpaceError(f"{path}: stages.compare[{i}].method: a second {stage.method!r} comparison stage")
        out[name] = stage
    return out


def _stage(raw, path: str, where: str, top_level: bool = False) -> StageSpace:
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: {where.rstrip('.') or 'the file'} must be a mapping with method, sweep, params")
    for key in raw:
        if key not in _STAGE_KEYS:
            if top_level:
                raise SpaceError(f"{path}: unknown top-level key {key!r} (keys: method, sweep, params; or stages)")
            raise SpaceError(f"{path}: unknown key '{where}{key}' (keys: method, sweep, params)")
    method = raw.get("method")
    if method is None:
        raise SpaceError(f"{path}: missing '{where}method' ({', '.join(METHODS)})")
    if method not in METHODS:
        raise SpaceError(f"{path}: {where}method: unknown method {method!r} (methods: {', '.join(METHODS)})")
    sweep = _sweep(raw.get("sweep"), path, where)
    params, constants = _params(raw.get("params"), method, path, where + "params.")
    if sweep.selection == "val_loss":
        scaling = [k for k in params if rescales_loss(k)]
        if scaling:
            raise SpaceError(f"{path}: {where}sweep.selection: val_loss cannot rank trials that sweep {scaling[0]} "
                             "(it rescales the loss, so the sampler would learn to shrink it); "
                             "use selection probe or rankme")
    return StageSpace(method=method, sweep=sweep, params=params, constants=constants)


def _sweep(raw, path: str, where: str) -> StageSweep:
    if raw is None:
        return StageSweep()
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: {where}sweep must be a mapping")
    names = [f.name for f in dataclasses.fields(StageSweep)]
    for key in raw:
        if key in RENAMED:
            raise SpaceError(f"{path}: '{where}sweep.{key}' is now '{where}sweep.{RENAMED[key]}' (the run config's "
                             f"name, train.{RENAMED[key]}); rename it")
        if key not in names:
            raise SpaceError(f"{path}: unknown key '{where}sweep.{key}' (keys: {', '.join(names)})")
    try:
        return StageSweep(**raw)
    except SpaceError as e:
        raise SpaceError(f"{path}: {where}{e}") from None


def _params(raw, method: str, path: str, where: str) -> tuple[dict, dict]:
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: {where.rstrip('.')} must be a mapping of section.key to a value or distribution")
    default = make_config(method)
    flat_default = _flat(default)
    params, constants = {}, {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise SpaceError(f"{path}: {where}{key!r}: keys are section.key text, e.g. optim.lr")
        if key not in flat_default:
            try:
                default.replace(**{key: 0})
            except ConfigError as e:
                raise SpaceError(f"{path}: {where}{key}: {e}") from None
            raise SpaceError(f"{path}: {where}{key}: unknown config key")  # not reached
        if key in _RESERVED:
            raise SpaceError(f"{path}: {where}{key}: {_RESERVED[key]}")
        if isinstance(value, dict):
            params[key] = _param_spec(value, key, _hint(default, key), path, where + key)
        else:
            constants[key] = value
    _check_values(default, params, constants, path, where)
    # Constants and choices as the config reads them (e.g. "1e-4" -> 0.0001 for a float key).
    ctx = {**constants, **{k: s.corner(False) for k, s in params.items()}}
    flat = _flat(default.replace(**ctx))
    constants = {k: flat[k] for k in constants}
    for key, spec in params.items():
        if spec.type == "categorical":
            read = tuple(_flat(default.replace(**{**ctx, key: c}))[key] for c in spec.choices)
            params[key] = dataclasses.replace(spec, choices=read)
    return params, constants


def _param_spec(raw: dict, key: str, hint, path: str, where: str) -> ParamSpec:
    for name in raw:
        if name not in _DIST_KEYS:
            raise SpaceError(f"{path}: {where}.{name}: unknown distribution key (keys: {', '.join(_DIST_KEYS)})")
    kind = raw.get("type")
    if kind is None:
        raise SpaceError(f"{path}: {where}: distribution without 'type' ({', '.join(PARAM_TYPES)}; "
                         "or give a bare value for a constant)")
    if kind not in PARAM_TYPES:
        raise SpaceError(f"{path}: {where}.type: unknown type {kind!r} (types: {', '.join(PARAM_TYPES)})")

    def refuse(msg):
        raise SpaceError(f"{path}: {where}: {msg}")

    if kind == "categorical":
        for name in ("low", "high", "log", "step"):
            if name in raw:
                refuse(f"'{name}' does not apply to a categorical (give choices)")
        choices = raw.get("choices")
        if not isinstance(choices, list):
            refuse("a categorical needs 'choices', a list")
        if not choices:
            refuse("empty choices")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                refuse(f"choice {c!r} is not a plain value (text, number, true/false, null)")
        if len(set(map(repr, choices))) != len(choices):
            refuse("repeated choice")
        return ParamSpec("categorical", choices=tuple(choices))

    if "choices" in raw:
        refuse(f"'choices' does not apply to type {kind}")
    if hint is bool or hint is str:
        refuse(f"{key} is a {'true/false' if hint is bool else 'text'} key: use type categorical")
    if kind in ("float", "log_float") and hint is int:
        refuse(f"{key} is an integer key: use type int")
    for name in ("low", "high"):
        if name not in raw:
            refuse(f"missing '{name}'")
    low, high = _number(raw["low"], kind, refuse, "low"), _number(raw["high"], kind, refuse, "high")
    log = raw.get("log", kind == "log_float")
    if not isinstance(log, bool):
        refuse(f"log must be true or false, got {log!r}")
    if kind == "log_float" and not log:
        refuse("type log_float with log: false (use type float)")
    if low >= high:
        refuse(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        refuse(f"a log-scale range needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None:
        step = _number(step, kind, refuse, "step")
        if step <= 0:
            refuse(f"step must be positive, got {step}")
        if log and not (kind == "int" and step == 1):
            refuse("step does not combine with a log scale")
        span = (high - low) / step
        if abs(span - round(span)) > 1e-9 * max(1.0, abs(span)):
            refuse(f"high - low ({high} - {low}) is not a multiple of step ({step})")
    return ParamSpec("float" if kind == "log_float" else kind, low=low, high=high, log=log, step=step)


def _number(value, kind: str, refuse, name: str):
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            refuse(f"{name} must be a number, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        refuse(f"{name} must be a finite number, got {value!r}")
    if kind == "int":
        if float(value) != int(value):
            refuse(f"{name} of an int distribution must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _check_values(default: Config, params: dict, constants: dict, path: str, where: str):
    """Apply every constant, bound and choice to the config, alone and with the other params at
    their low and at their high corner; refuse the first failure with the key it was checked under."""
    probes = [(k, v) for k, v in constants.items()] + [(k, v) for k, s in params.items() for v in s.probes()]

    def fails(flat: dict) -> str | None:
        try:
            default.replace(**flat)  # default = make_config(method)
        except ConfigError as e:
            return str(e)
        return None

    # Alone (against the method defaults): type and range errors. A cross-field failure here may be
    # a false alarm (slice_min 300 against the default slice_max 200), so it is confirmed in context
    # built from the keys that did pass alone.
    alone = [(k, v, msg) for k, v in probes if (msg := fails({k: v}))]
    bad_keys = {k for k, _, _ in alone}
    for key, value, msg in alone:
        ctxs = [{**{k: v for k, v in constants.items() if k not in bad_keys},
                 **{k: s.corner(c) for k, s in params.items() if k not in bad_keys}} for c in (False, True)]
        if all(fails({**ctx, key: value}) for ctx in ctxs):
            raise SpaceError(f"{path}: {where}{key}: {fails({**ctxs[0], key: value}) or msg}")
    # Together: cross-field rules at the corners of the space.
    for corner in (False, True):
        ctx = {**constants, **{k: s.corner(corner) for k, s in params.items()}}
        for key, value in probes:
            msg = fails({**ctx, key: value})
            if msg:
                at = "high" if corner else "low"
                raise SpaceError(f"{path}: {where}{key}: {msg} (with {value!r} and the other params at their {at} ends)")


# ---------------------------------------------------------------------------------------------
# helpers


def _flat(cfg: Config) -> dict:
    return {f"{section}.{k}": v for section, values in cfg.to_dict().items() for k, v in values.items()}


def _hint(cfg: Config, key: str):
    section, name = key.split(".", 1)
    hint = typing.get_type_hints(type(getattr(cfg, section)))[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a repeated key instead of keeping the last one."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_message(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    text = f"YAML syntax error{where}: {problem}"
    return " ".join(text.split())
