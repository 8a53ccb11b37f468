"""The package stands on its own: every import it makes is a declared dependency, the search spaces
ship inside it, `--version` works, and light commands do not import torch, Ray or Optuna."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "optuna")


def declared() -> set[str]:
    """Required dependencies plus the optional integrations' extras (mlflow, wandb: imported only
    when their --tracker is asked for, after a check that they are installed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    deps = project["dependencies"] + [d for name, ds in extras.items() if name != "test" for d in ds]
    return {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def third_party_imports() -> dict[str, str]:
    """Top-level module -> a file importing it, for every absolute non-stdlib import in mlem_ray/."""
    found = {}
    for path in (ROOT / "mlem_ray").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("mlem_ray", "__future__"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_import_is_a_declared_dependency():
    dists = packages_distributions()
    deps = declared()
    missing = {}
    for module, where in third_party_imports().items():
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & deps:
            missing[module] = (sorted(names), where)
    assert not missing, f"imported but not in pyproject dependencies: {missing}"


def test_search_spaces_ship_inside_the_package():
    from importlib.resources import files

    from mlem_ray.sweep.space import load_space, shipped

    assert {"quick", "mlem", "coles", "generative", "hybrid"} <= set(shipped())
    for name in shipped():
        assert (files("mlem_ray") / "search_spaces" / f"{name}.yaml").is_file()
        assert load_space(name).stages and load_space(f"{name}.yaml").stages
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "search_spaces/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["mlem_ray"]
    # The top-level search_spaces/ (docs/design.md#layout) is the same files, not a second copy.
    assert (ROOT / "search_spaces").resolve() == (ROOT / "mlem_ray" / "search_spaces").resolve()


def test_space_by_name_file_or_refused(tmp_path):
    from mlem_ray.sweep.space import SpaceError, load_space

    own = tmp_path / "mine.yaml"
    own.write_text("method: coles\nparams: {optim.lr: {type: log_float, low: 1.0e-4, high: 1.0e-2}}\n")
    assert list(load_space(own).stages) == ["coles"]
    with pytest.raises(SpaceError, match="not a shipped search space .*shipped: coles"):
        load_space("nope")
    with pytest.raises(SpaceError, match="no such search-space file"):
        load_space(str(tmp_path / "missing.yaml"))


def run_cli(*args, cwd=None):
    probe = ("import sys, runpy; sys.argv = ['mlem-ray', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('mlem_ray', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\nsys.exit(code)")
    return subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("args", [("--help",), ("sweep", "--help"), ("report", "--help"), ("data", "pendulum", "--help")])
def test_help_imports_no_torch_ray_or_optuna(args):
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout[-300:]


def test_version_and_data_without_heavy_imports(tmp_path):
    done = run_cli("--version")
    assert done.returncode == 0 and re.search(r"mlem-ray \d+\.\d+", done.stdout)
    done = run_cli("data", "pendulum", "--out", str(tmp_path / "d"), "--sequences", "20", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout and (tmp_path / "d" / "schema.json").exists()


def test_unknown_space_name_is_one_line_exit_2(tmp_path):
    done = run_cli("sweep", "--space", "nope", "--out", str(tmp_path / "s"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "shipped: " in done.stderr
    assert not (tmp_path / "s").exists()
