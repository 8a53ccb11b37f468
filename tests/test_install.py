"""`pip install .` into a fresh virtualenv, then `mlem-ray sweep --out DIR --trials 2` from an
empty directory elsewhere: the package finds its search spaces and every dependency it imports.

Slow the first time (a new venv: torch pinned first, as the Makefile does, then the package
with all its dependencies, from pip's cache where it can). The venv is kept, keyed by
pyproject.toml, the torch pin and the Python version, so a changed dependency list gets a fresh
venv; the package itself is reinstalled (not editable, from a copy of the tree) on every run.
Set MLEM_RAY_INSTALL_CACHE to move the venvs (default ~/.cache/mlem_ray/install-test).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.install, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "build", "*.egg-info", ".pytest_cache")


def torch_pin() -> str:
    m = re.search(r"^TORCH \?= (\S+)", (ROOT / "Makefile").read_text(), re.M)
    return m.group(1) if m else "torch"


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "RAY_ADDRESS"))}
    env["PATH"] = "/usr/bin:/bin"
    return env


def pip(venv: Path, *args: str, timeout: float = 1800) -> None:
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], capture_output=True,
                          text=True, timeout=timeout, env=clean_env())
    assert done.returncode == 0, f"pip install {' '.join(args)} failed:\n{done.stderr[-3000:]}"


def dependency_venv(src: Path) -> Path:
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + torch_pin().encode() + sys.version.encode())
    root = Path(os.environ.get("MLEM_RAY_INSTALL_CACHE") or Path.home() / ".cache" / "mlem_ray" / "install-test")
    venv = root / key.hexdigest()[:16]
    if (venv / ".complete").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)  # a half-made one (an interrupted run)
    venv.parent.mkdir(parents=True, exist_ok=True)
    # The venv lives at its final path: scripts inside it hard-code that path.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip(venv, torch_pin())
    pip(venv, str(src))  # the package and every dependency it declares
    (venv / ".complete").write_text("ok")
    return venv


def test_pip_install_then_sweep_from_an_empty_directory(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP, symlinks=True)
    venv = dependency_venv(src)
    pip(venv, "--no-deps", "--force-reinstall", str(src))  # this tree's code, not an editable link
    check = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True,
                           env=clean_env(), timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr  # every declared dependency is there
    shutil.rmtree(src)

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    mlem_ray = venv / "bin" / "mlem-ray"
    version = subprocess.run([str(mlem_ray), "--version"], capture_output=True, text=True, cwd=empty, env=clean_env())
    assert version.returncode == 0 and version.stdout.startswith("mlem-ray "), version.stderr
    out = tmp_path / "s"
    done = subprocess.run([str(mlem_ray), "sweep", "--out", str(out), "--trials", "2"], capture_output=True, text=True,
                          cwd=empty, env=clean_env(), timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "sweep finished" in done.stdout
    import pandas as pd

    board = pd.read_parquet(out / "leaderboard.parquet")
    assert sorted(board["stage"].value_counts().items()) == [("mlem", 2), ("teacher", 2)]
    assert (out / "space.yaml").read_text().startswith("# ")  # the shipped quick space, copied
    assert not any(empty.iterdir()), list(empty.iterdir())  # nothing written to the working dir
