"""The evaluation probes' cost knobs (--folds, --tree-iters) on `sweep` and `evaluate`: refused with
one line and exit 2 when out of range, recorded in sweep.json, and an older sweep.json without them
still resumes with the defaults."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from mlem_ray.cli import main


@pytest.mark.parametrize("argv, fragment", [
    (["sweep", "--tree-iters", "0"], "--tree-iters must be at least 1"),
    (["sweep", "--folds", "1"], "--folds must be at least 2"),
    (["evaluate", "--data", "d", "--checkpoint", "c", "--tree-iters", "-3"], "--tree-iters must be at least 1"),
    (["evaluate", "--data", "d", "--checkpoint", "c", "--folds", "1"], "--folds must be at least 2"),
])
def test_out_of_range_probe_knobs_are_one_line_and_exit_2(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_sweep_settings_carry_the_probe_knobs_and_old_files_get_the_defaults():
    from mlem_ray.sweep.pipeline import SweepJob

    saved = asdict(SweepJob(out="o", folds=3, tree_iters=40))
    assert SweepJob(**json.loads(json.dumps(saved))) == SweepJob(out="o", folds=3, tree_iters=40)
    old = {k: v for k, v in saved.items() if k not in ("folds", "tree_iters")}  # a sweep.json of an earlier release
    assert (SweepJob(**old).folds, SweepJob(**old).tree_iters) == (5, 300)
