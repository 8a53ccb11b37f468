"""Fixtures shared by the test modules (their building blocks are in helpers.py):

- `ray_session`: one Ray instance per module (local, 2 CPUs, no dashboard), shut down after the
  module's last test. A module changes its options by defining a fixture `ray_options` that
  returns `ray.init` keyword arguments (e.g. {"num_cpus": 1}).
- `pendulum_data(sequences, seed, ...)`: a tiny prepared Pendulum set, made once per session for
  each distinct set of arguments and shared read-only by every module that asks for the same one.
- `tiny_two_stage_space`: the path of a YAML file holding helpers.RESUMABLE_TWO_STAGE.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

# Ray Train's controller polls its workers every 2 s, and a worker's report reaches Tune only at a
# poll: a tiny 2-worker trial's epoch (milliseconds of work) took 2.04 s. Set before any Ray starts,
# so every local instance, CLI subprocess and test cluster node inherits it; real epochs, which
# last far longer than a poll, keep Ray's default.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

sys.path.insert(0, str(Path(__file__).parent))  # helpers.py, s3server.py

from helpers import RESUMABLE_TWO_STAGE, make_pendulum, ray_instance  # noqa: E402


@pytest.fixture(scope="module")
def ray_options() -> dict:
    return {}


@pytest.fixture(scope="module")
def ray_session(ray_options):
    pytest.importorskip("ray")
    with ray_instance(**ray_options) as ray:
        yield ray


@pytest.fixture(scope="session")
def pendulum_data(tmp_path_factory):
    made: dict[tuple, Path] = {}

    def make(sequences: int, seed: int, test_fraction: float = 0.2, val_fraction: float = 0.2) -> Path:
        key = (sequences, seed, test_fraction, val_fraction)
        if key not in made:
            made[key] = make_pendulum(tmp_path_factory.mktemp(f"pendulum{sequences}s{seed}") / "p", *key)
        return made[key]

    return make


@pytest.fixture
def tiny_two_stage_space(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(RESUMABLE_TWO_STAGE))
    return path
