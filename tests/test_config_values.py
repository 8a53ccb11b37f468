"""Non-finite config values are refused however they come in (`--set` text, YAML floats, quoted
YAML text, a search-space's fixed value through `Config.replace`), naming the key: exit 2, one
line, nothing written."""
import os
from pathlib import Path

import pytest

from mlem_ray.cli import main
from mlem_ray.config import ConfigError, Config, make_config, parse_overrides
from mlem_ray.data import pendulum, prepare, write_prepared
from mlem_ray.data.ingest import IngestSpec

NON_FINITE = [
    ("optim.lr", "nan"), ("optim.lr", ".nan"), ("optim.lr", "1e400"), ("optim.lr", "-.inf"),
    ("train.epochs", ".inf"), ("train.epochs", "nan"), ("model.hidden", ".nan"), ("model.hidden", ".inf"),
    ("objective.margin", "nan"), ("objective.tau", "inf"), ("objective.w_align", ".NaN"),
    ("train.budget_cpu_s", ".inf"), ("model.dropout", "nan"), ("optim.clip_grad", "Infinity"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "p"
    events, targets = pendulum.generate(40, seed=0)
    spec = IngestSpec(id_col="id", time_col="time", num_cols=("x", "y"), target_col="L", task="regression")
    write_prepared(path, *prepare(events, spec, targets))
    return path


def run_refused(argv, where: Path, capsys) -> str:
    cwd = os.getcwd()
    os.chdir(where)
    try:
        code = main([str(a) for a in argv])
    finally:
        os.chdir(cwd)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("mlem-ray pretrain: error:"), (code, err)
    assert not any(where.iterdir()), "the refused command wrote files"
    return err[0]


@pytest.mark.parametrize("key,text", NON_FINITE, ids=[f"{k}={t}" for k, t in NON_FINITE])
def test_set_refuses_a_non_finite_value_naming_the_key(data, tmp_path, capsys, key, text):
    line = run_refused(["pretrain", "--data", data, "--method", "coles", "--out", tmp_path / "run",
                        "--set", f"{key}={text}"], tmp_path, capsys)
    assert key in line and ("finite" in line or "must be an integer" in line), line


@pytest.mark.parametrize("yaml_value", [".nan", ".inf", "'nan'", "'-inf'", "1e999"])
def test_config_yaml_refuses_a_non_finite_value_naming_the_key(data, tmp_path, capsys, yaml_value):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"objective:\n  margin: {yaml_value}\n")
    own = tmp_path / "own"
    own.mkdir()
    line = run_refused(["pretrain", "--data", data, "--method", "coles", "--out", own / "run", "--config", cfg],
                       own, capsys)
    assert "objective.margin" in line and "finite" in line, line


def test_every_way_in_meets_the_same_check():
    for key, text in NON_FINITE:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            make_config("coles", parse_overrides([f"{key}={text}"]))
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            Config().replace(**{key: float(text.replace(".", "").replace("Infinity", "inf")) if text != "1e400"
                                else float("inf")})
    # finite values in all the same forms still work
    cfg = make_config("coles", parse_overrides(["optim.lr=3e-3", "train.epochs=2.0", "objective.margin=0.87"]),
                      {"model": {"hidden": 32.0}, "objective": {"tau": "0.1"}})
    assert (cfg.optim.lr, cfg.train.epochs, cfg.model.hidden, cfg.objective.tau) == (3e-3, 2, 32, 0.1)
