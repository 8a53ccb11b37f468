"""The Python API (mlem_ray/api.py): the README's example runs as written, `import mlem_ray` stays
light, and each function does what its CLI twin does (same refusals, same outputs)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlem_ray

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "optuna")


def readme_example() -> str:
    """The ```python block of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section should hold one python example"
    return blocks[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The README example, run once in an empty directory; -> its variables."""
    work = tmp_path_factory.mktemp("api")
    old = os.getcwd()
    os.chdir(work)
    try:
        scope: dict = {}
        exec(compile(readme_example(), "README.md (Python API)", "exec"), scope)
    finally:
        os.chdir(old)
    scope["work"] = work
    return scope


def _python(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_import_is_light():
    """`python -X importtime -c "import mlem_ray"` imports neither torch nor Ray nor Optuna."""
    run = _python("-X", "importtime", "-c", "import mlem_ray")
    imported = {line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "mlem_ray" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert not heavy, f"import mlem_ray pulled in {heavy[:5]}"


def test_api_names_resolve_without_heavy_imports():
    """Looking up every API name loads its module (mlem_ray.api, .config) but still no torch, Ray or
    Optuna: those come only when a function is called."""
    code = ("import sys, mlem_ray\n"
            "for name in mlem_ray.__all__: getattr(mlem_ray, name)\n"
            "assert callable(mlem_ray.sweep)\n"
            "print(' '.join(sorted(sys.modules)))\n")
    loaded = set(_python("-c", code).stdout.split())
    assert {"mlem_ray.api", "mlem_ray.config", "mlem_ray.sweep"} <= loaded
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"resolving the API names pulled in {heavy[:5]}"


def test_unknown_name_is_an_attribute_error():
    assert {"prepare", "open_data", "pretrain", "load_encoder", "sweep", "Config"} <= set(dir(mlem_ray))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mlem_ray.nope  # noqa: B018


def test_readme_example_runs_and_embeds_every_sequence(example):
    seqs, frame, encoder = example["seqs"], example["frame"], example["encoder"]
    assert len(seqs) > 250  # 300 generated, those shorter than min_len left out
    assert list(frame.index) == seqs.ids.to_pylist()
    emb = frame[[f"e{j}" for j in range(encoder.dim)]].to_numpy()
    assert emb.shape == (len(seqs), 16) and np.isfinite(emb).all()
    assert set(frame["split"]) == {"train", "val", "test"}
    np.testing.assert_allclose(frame["target"].to_numpy(), seqs.targets)
    # The checkpoint is the CLI's: best/ with its config, trained as asked.
    assert (example["work"] / "runs/api/coles/best/model.pt").exists()
    assert encoder.config.objective.method == "coles" and encoder.config.model.hidden == 16


def test_embed_as_array_and_by_split_match_the_frame(example):
    encoder, seqs, frame = example["encoder"], example["seqs"], example["frame"]
    test_rows = seqs.indices("test")
    arr = encoder.embed(mlem_ray.open_data(example["work"] / "runs/api/data"), splits=("test",), as_array=True)
    assert arr.shape == (len(test_rows), encoder.dim) and arr.dtype == np.float32
    expected = frame.loc[seqs.ids.take(test_rows).to_pylist(), [f"e{j}" for j in range(encoder.dim)]].to_numpy()
    np.testing.assert_allclose(arr, expected, rtol=1e-5, atol=1e-6)


def test_pretrain_takes_a_config_object_and_typed_overrides(example, tmp_path):
    cfg = mlem_ray.make_config("coles", {"model.hidden": 8, "data.batch_size": 16, "train.steps_per_epoch": 2})
    best = mlem_ray.pretrain(example["work"] / "runs/api/data", "coles", tmp_path / "run", epochs=1, config=cfg,
                             overrides={"optim.lr": 0.002, "data.slice_min": 5, "data.slice_max": 20})
    encoder = mlem_ray.load_encoder(best)
    assert encoder.dim == 8
    assert encoder.config.optim.lr == 0.002 and encoder.config.data.slice_max == 20


def test_refusals_are_user_errors_and_write_nothing(example, tmp_path):
    with pytest.raises(mlem_ray.UserError, match="not a prepared data set"):
        mlem_ray.pretrain(tmp_path, "coles", tmp_path / "run")
    with pytest.raises(mlem_ray.UserError, match="already holds a run"):  # no resume, no overwrite
        mlem_ray.pretrain(example["work"] / "runs/api/data", "coles", example["work"] / "runs/api/coles", epochs=1)
    events, _ = example["events"], example["targets"]
    with pytest.raises(mlem_ray.UserError, match="no column 'client'"):
        mlem_ray.prepare(events, tmp_path / "bad", id_col="client", time_col="time")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(mlem_ray.UserError, match="expected a pyarrow Table"):
        mlem_ray.prepare([1, 2, 3], tmp_path / "bad", id_col="id", time_col="time")


def test_prepare_takes_pandas_and_spec_fields(example, tmp_path):
    events = example["events"].to_pandas()
    seqs = mlem_ray.prepare(events, tmp_path / "p", id_col="id", time_col="time", num_cols=["x", "y"], min_len=1)
    assert seqs.schema.task is None and seqs.targets is None
    assert [f.name for f in seqs.schema.numeric] == ["x", "y"]
    assert seqs.num_events == len(events)
