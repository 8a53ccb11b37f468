"""Search-space files (mlem_ray/sweep/space.py): every shipped YAML loads and builds valid configs,
the mapping to Optuna distributions is exact, and each kind of bad file is refused with one line
naming the file and the key. No Ray cluster is started."""
from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mlem_ray.config import make_config
from mlem_ray.sweep.space import FROM_TEACHER, SearchSpace, SpaceError, StageSpace, StageSweep

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
SPACE_FILES = sorted(SPACES.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def corner(stage: StageSpace, high: bool) -> dict:
    out = {}
    for key, dist in stage.optuna_space().items():
        if isinstance(dist, CategoricalDistribution):
            out[key] = dist.choices[-1 if high else 0]
        else:
            out[key] = dist.high if high else dist.low
    return out


def tpe_samples(stage: StageSpace, n: int = 8) -> list[dict]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, multivariate=True))
    space = stage.optuna_space()
    samples = []
    for i in range(n):
        trial = study.ask(space)
        samples.append(trial.params)
        study.tell(trial, float(i))
    return samples


# ---------------------------------------------------------------------------------------------
# the shipped files


def test_shipped_files_exist():
    names = {p.name for p in SPACE_FILES}
    assert {"coles.yaml", "generative.yaml", "hybrid.yaml", "mlem.yaml", "quick.yaml"} <= names


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
def test_shipped_file_loads_and_builds_configs(path):
    space = SearchSpace.load(path)
    assert space.path == str(path)
    assert space.stages
    for name, stage in space.stages.items():
        assert stage.params, f"{path.name}:{name} sweeps nothing"
        samples = [corner(stage, False), corner(stage, True), *tpe_samples(stage)]
        for sample in samples:
            flat = stage.overrides(sample)
            assert flat["train.epochs"] == stage.sweep.epochs
            cfg = make_config(stage.method).replace(**flat)
            assert cfg.objective.method == stage.method
            assert cfg.train.epochs == stage.sweep.epochs
            for key, value in stage.constants.items():
                section, attr = key.split(".")
                assert getattr(getattr(cfg, section), attr) == value
            assert cfg == stage.config(sample)


@pytest.mark.parametrize("name", ["mlem.yaml", "quick.yaml"])
def test_two_stage_files(name):
    space = SearchSpace.load(SPACES / name)
    assert space.is_two_stage
    assert space.stages["teacher"].method == "coles"
    assert space.stages["mlem"].method == "mlem"
    for key in FROM_TEACHER:
        assert key not in space.stages["mlem"].params and key not in space.stages["mlem"].constants


@pytest.mark.parametrize("name", ["coles.yaml", "generative.yaml", "hybrid.yaml"])
def test_one_stage_files(name):
    space = SearchSpace.load(SPACES / name)
    assert not space.is_two_stage
    assert list(space.stages) == [name.removesuffix(".yaml")]


def test_shipped_files_cover_method_section_4():
    swept = set()
    for path in SPACE_FILES:
        for stage in SearchSpace.load(path).stages.values():
            swept |= set(stage.params)
    wanted = {
        "objective.w_rec", "objective.w_align", "objective.w_con", "objective.w_time",
        "objective.tau", "objective.siglip_t_init", "objective.margin",
        "model.hidden", "model.layers", "model.cat_emb_dim", "model.num_emb_dim",
        "model.decoder_width", "model.decoder_layers", "data.slice_min", "data.slice_max",
        "optim.lr", "optim.weight_decay", "model.dropout", "model.embedding_dropout",
    }
    assert wanted <= swept, sorted(wanted - swept)
    hidden = SearchSpace.load(SPACES / "coles.yaml").stages["coles"].optuna_space()["model.hidden"]
    assert hidden == IntDistribution(64, 1024, log=True)
    lr = SearchSpace.load(SPACES / "coles.yaml").stages["coles"].optuna_space()["optim.lr"]
    assert isinstance(lr, FloatDistribution) and lr.log


def test_quick_space_stays_small():
    space = SearchSpace.load(SPACES / "quick.yaml")
    for stage in space.stages.values():
        assert stage.sweep.trials <= 4 and stage.sweep.epochs <= 3
        assert 0 < stage.constants["train.steps_per_epoch"] <= 20
        assert stage.constants["data.batch_size"] <= 64
        cfg = make_config(stage.method).replace(**stage.overrides(corner(stage, True)))
        assert cfg.model.layers == 1
    teacher = space.stages["teacher"]
    assert teacher.config(corner(teacher, True)).model.hidden <= 96
    assert space.stages["mlem"].config(corner(space.stages["mlem"], True)).model.hidden <= 96
    assert space.stages["mlem"].constants["model.decoder_layers"] == 1


# ---------------------------------------------------------------------------------------------
# the mapping to Optuna


def test_hand_written_space_maps_to_exact_distributions(tmp_path):
    path = write(tmp_path, """
        method: hybrid
        sweep: {trials: 7, scheduler: none, epochs: 4, selection: probe, mode: max, seed: 3, finalists: 2}
        params:
          optim.lr: {type: log_float, low: 1.0e-4, high: 1.0e-2}
          optim.weight_decay: {type: float, low: 1e-5, high: 1e-2, log: true}   # YAML text, converted
          objective.margin: {type: float, low: 0.3, high: 1.0}
          objective.w_con: {type: float, low: 0.0, high: 2.0, step: 0.5}
          model.hidden: {type: int, low: 64, high: 512, step: 64}   # divisible by heads (transformer)
          model.cat_emb_dim: {type: int, low: 4, high: 64, log: true}
          model.decoder_width: {type: int, low: 32, high: 128, step: 32}
          model.encoder: {type: categorical, choices: [gru, transformer]}
          optim.clip_grad: {type: categorical, choices: [0, 1, 5]}
          model.layers: 2
          objective.w_time: 1e1
    """)
    space = SearchSpace.load(path)
    assert not space.is_two_stage and list(space.stages) == ["hybrid"]
    stage = space.stages["hybrid"]
    assert stage.sweep == StageSweep(trials=7, scheduler="none", epochs=4, selection="probe", mode="max",
                                     seed=3, finalists=2)
    assert stage.optuna_space() == {
        "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "optim.weight_decay": FloatDistribution(1e-5, 1e-2, log=True),
        "objective.margin": FloatDistribution(0.3, 1.0),
        "objective.w_con": FloatDistribution(0.0, 2.0, step=0.5),
        "model.hidden": IntDistribution(64, 512, step=64),
        "model.cat_emb_dim": IntDistribution(4, 64, log=True),
        "model.decoder_width": IntDistribution(32, 128, step=32),
        "model.encoder": CategoricalDistribution(["gru", "transformer"]),
        "optim.clip_grad": CategoricalDistribution([0.0, 1.0, 5.0]),  # read as the config's floats
    }
    assert stage.constants == {"model.layers": 2, "objective.w_time": 10.0}
    sample = {"optim.lr": 1e-3, "optim.weight_decay": 1e-4, "objective.margin": 0.5, "objective.w_con": 1.5,
              "model.hidden": 128, "model.cat_emb_dim": 8, "model.decoder_width": 64, "model.encoder": "transformer",
              "optim.clip_grad": 5.0, "_tune_internal": 1}
    flat = stage.overrides(sample)
    assert flat == {"model.layers": 2, "objective.w_time": 10.0, **{k: v for k, v in sample.items() if k[0] != "_"},
                    "train.epochs": 4, "train.selection": "probe", "train.selection_every": 1,
                    "train.selection_size": 4096}
    # A re-seeded run's train.seed and the pipeline's fixed keys go through the same path.
    cfg = stage.config({**sample, "train.seed": 7}, fixed={"train.threads": 1})
    assert (cfg.train.seed, cfg.train.threads, cfg.train.selection) == (7, 1, "probe")
    cfg = make_config("hybrid").replace(**flat)
    assert (cfg.model.hidden, cfg.model.encoder, cfg.model.layers, cfg.train.epochs) == (128, "transformer", 2, 4)
    with pytest.raises(SpaceError, match="model.encoder"):
        stage.overrides({k: v for k, v in sample.items() if k != "model.encoder"})


def test_two_stage_with_comparisons(tmp_path):
    path = write(tmp_path, """
        stages:
          teacher: {method: coles, params: {optim.lr: {type: log_float, low: 1.0e-4, high: 1.0e-2}}}
          mlem:
            method: mlem
            sweep: {trials: 3, epochs: 2}
            params: {objective.w_align: {type: log_float, low: 1.0, high: 1000.0}}
          compare:
            - {method: generative, params: {model.decoder_layers: {type: int, low: 1, high: 3}}}
            - {method: hybrid, params: {objective.w_con: {type: float, low: 0.1, high: 2.0}}}
    """)
    space = SearchSpace.load(path)
    assert space.is_two_stage
    assert list(space.stages) == ["teacher", "mlem", "compare_generative", "compare_hybrid"]
    assert space.stages["teacher"].sweep == StageSweep()
    assert space.stages["mlem"].sweep.trials == 3
    assert space.stages["mlem"].overrides({"objective.w_align": 10.0}) == {"objective.w_align": 10.0,
                                                                            "train.epochs": 2}
    assert [s.method for s in space.stages.values()] == ["coles", "mlem", "generative", "hybrid"]


def test_searcher_is_seeded_optuna_search():
    from ray.tune.search.optuna import OptunaSearch

    stage = SearchSpace.load(SPACES / "quick.yaml").stages["teacher"]
    searcher = stage.searcher()
    assert isinstance(searcher, OptunaSearch)
    assert searcher.metric == "probe_score" and searcher.mode == "max"
    config = searcher.suggest("trial_0")
    assert set(config) == set(stage.params)  # dotted keys stay flat
    make_config(stage.method).replace(**stage.overrides(config))
    again = stage.searcher().suggest("trial_0")
    assert again == config  # seeded
    assert isinstance(stage.searcher(seed=5), OptunaSearch)


def test_stage_space_pickles():
    space = SearchSpace.load(SPACES / "mlem.yaml")
    assert pickle.loads(pickle.dumps(space)) == space


def test_sweep_settings_validate():
    assert StageSweep().scheduler == "asha"
    for bad in ({"trials": 0}, {"scheduler": "hyperband"}, {"mode": "best"}, {"grace_period": 0},
                {"reduction_factor": 1}, {"epochs": 0}, {"finalists": 0}, {"trials": "many"}):
        with pytest.raises(SpaceError, match=f"sweep.{next(iter(bad))}"):
            StageSweep(**bad)


# ---------------------------------------------------------------------------------------------
# bad files: refused with one line naming the file and the key

STAGE = "{method: coles, params: {optim.lr: {type: log_float, low: 1.0e-4, high: 1.0e-2}}}"
MLEM = "{method: mlem, params: {objective.w_align: {type: log_float, low: 1.0, high: 100.0}}}"

BAD = {
    "unknown top-level key": ("method: coles\ntrials: 3\n", "'trials'"),
    "top-level key beside stages": (f"method: coles\nstages:\n  teacher: {STAGE}\n  mlem: {MLEM}\n", "'method'"),
    "unknown method": ("method: bert\n", "bert"),
    "missing method": ("params: {optim.lr: 0.01}\n", "method"),
    "unknown stage key": ("method: coles\nparam: {}\n", "'param'"),
    "unknown param key": ("method: coles\nparams: {optim.lrr: {type: float, low: 0.1, high: 0.2}}\n", "optim.lrr"),
    "param key without section": ("method: coles\nparams: {lr: 0.01}\n", "lr"),
    "unknown section": ("method: coles\nparams: {sweep.trials: 3}\n", "sweep.trials"),
    "constant of the wrong type": ("method: coles\nparams: {model.hidden: big}\n", "model.hidden"),
    "constant out of range": ("method: coles\nparams: {model.dropout: 1.5}\n", "model.dropout"),
    "bad choice": ("method: coles\nparams: {model.encoder: {type: categorical, choices: [gru, lstm]}}\n",
                   "model.encoder"),
    "bound out of range": ("method: coles\nparams: {objective.margin: {type: float, low: -1.0, high: 1.0}}\n",
                           "objective.margin"),
    "missing type": ("method: coles\nparams: {optim.lr: {low: 1.0e-4, high: 1.0e-2}}\n", "optim.lr"),
    "unknown type": ("method: coles\nparams: {optim.lr: {type: uniform, low: 1.0e-4, high: 1.0e-2}}\n",
                     "optim.lr.type"),
    "unknown distribution key": ("method: coles\nparams: {optim.lr: {type: float, low: 0.1, high: 0.2, q: 1}}\n",
                                 "optim.lr.q"),
    "missing bound": ("method: coles\nparams: {optim.lr: {type: float, low: 0.1}}\n", "optim.lr"),
    "low >= high": ("method: coles\nparams: {optim.lr: {type: float, low: 0.1, high: 0.01}}\n", "optim.lr"),
    "low == high": ("method: coles\nparams: {model.layers: {type: int, low: 2, high: 2}}\n", "model.layers"),
    "log with low <= 0": ("method: coles\nparams: {optim.weight_decay: {type: log_float, low: 0.0, high: 0.1}}\n",
                          "optim.weight_decay"),
    "int log with low <= 0": ("method: coles\nparams: {data.max_len: {type: int, low: 0, high: 100, log: true}}\n",
                              "data.max_len"),
    "empty choices": ("method: coles\nparams: {model.encoder: {type: categorical, choices: []}}\n", "model.encoder"),
    "float distribution on an int key": ("method: coles\nparams: {model.hidden: {type: float, low: 64, high: 512}}\n",
                                         "model.hidden"),
    "numeric distribution on a text key": ("method: coles\nparams: {model.encoder: {type: int, low: 1, high: 2}}\n",
                                           "model.encoder"),
    "fractional int bound": ("method: coles\nparams: {model.layers: {type: int, low: 1, high: 2.5}}\n",
                             "model.layers"),
    "step not dividing the range": ("method: coles\nparams: {model.hidden: {type: int, low: 64, high: 100, step: 32}}\n",
                                    "model.hidden"),
    "step with log": ("method: coles\nparams: {optim.lr: {type: log_float, low: 1.0e-4, high: 1.0e-2, step: 0.001}}\n",
                      "optim.lr"),
    "overlapping slice ranges": ("method: coles\nparams:\n  data.slice_min: {type: int, low: 10, high: 100}\n"
                                 "  data.slice_max: {type: int, low: 50, high: 200}\n", "data.slice_m"),
    "width not divisible by heads": ("method: mlem\nparams: {model.decoder_width: {type: int, low: 32, high: 64}}\n",
                                     "model.decoder_width"),
    "hidden not divisible by heads for a transformer choice": (
        "method: coles\nparams:\n  model.encoder: {type: categorical, choices: [gru, transformer]}\n"
        "  model.hidden: {type: int, low: 64, high: 512, log: true}\n", "model.hidden"),
    "train.epochs as a param": ("method: coles\nparams: {train.epochs: 5}\n", "train.epochs"),
    "objective.method as a param": ("method: coles\nparams: {objective.method: mlem}\n", "objective.method"),
    "unknown sweep key": ("method: coles\nsweep: {trails: 5}\n", "sweep.trails"),
    "bad sweep value": ("method: coles\nsweep: {scheduler: hyperband}\n", "sweep.scheduler"),
    "zero trials": ("method: coles\nsweep: {trials: 0}\n", "sweep.trials"),
    "grace period beyond epochs": ("method: coles\nsweep: {grace_period: 5, epochs: 3}\n", "sweep.grace_period"),
    "YAML syntax error": ("method: coles\nparams: {optim.lr: [1, 2\n", "YAML syntax error at line"),
    "duplicate key": ("method: coles\nmethod: mlem\n", "duplicate key 'method'"),
    "empty file": ("", "empty"),
    "not a mapping": ("- method: coles\n", "mapping"),
    "teacher not coles": (f"stages:\n  teacher: {MLEM}\n  mlem: {MLEM}\n", "stages.teacher.method"),
    "mlem stage not mlem": (f"stages:\n  teacher: {STAGE}\n  mlem: {STAGE}\n", "stages.mlem.method"),
    "missing mlem stage": (f"stages:\n  teacher: {STAGE}\n", "stages.mlem"),
    "unknown stage name": (f"stages:\n  teacher: {STAGE}\n  mlem: {MLEM}\n  student: {STAGE}\n", "stages.student"),
    "bad key inside a stage": (f"stages:\n  teacher: {STAGE}\n  mlem: {{method: mlem, params: {{optim.lrr: 1}}}}\n",
                               "stages.mlem.params.optim.lrr"),
    "mlem stage sets the teacher": (f"stages:\n  teacher: {STAGE}\n  mlem: {{method: mlem, params: "
                                    "{objective.teacher: /ckpt}}\n", "objective.teacher"),
    "duplicate comparison": (f"stages:\n  teacher: {STAGE}\n  mlem: {MLEM}\n  compare:\n"
                             "    - {method: hybrid}\n    - {method: hybrid}\n", "stages.compare[1].method"),
    "bad comparison stage": (f"stages:\n  teacher: {STAGE}\n  mlem: {MLEM}\n  compare:\n"
                             "    - {method: generative, sweep: {mode: up}}\n", "stages.compare[0].sweep.mode"),
}


@pytest.mark.parametrize("text,key", BAD.values(), ids=BAD.keys())
def test_bad_file_is_refused(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        SearchSpace.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert key in msg, msg
    assert "\n" not in msg


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpaceError, match="no such search-space file") as info:
        SearchSpace.load(path)
    assert str(path) in str(info.value)


def test_cross_field_constants_are_checked_together(tmp_path):
    # slice_min 300 fails against the default slice_max (200) alone, but not with slice_max 400.
    path = write(tmp_path, """
        method: coles
        params:
          data.slice_min: 300
          data.slice_max: {type: int, low: 400, high: 500}
    """)
    stage = SearchSpace.load(path).stages["coles"]
    cfg = stage.config({"data.slice_max": 450})
    assert (cfg.data.slice_min, cfg.data.slice_max) == (300, 450)
    path = write(tmp_path, "method: coles\nparams: {data.slice_min: 300, data.slice_max: 250}\n", "bad.yaml")
    with pytest.raises(SpaceError, match="data.slice_min"):
        SearchSpace.load(path)
