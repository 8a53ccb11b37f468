"""Kill the sweep driver (and its in-process Ray) mid-sweep, then `--resume`: every trial runs
once, finished trials are neither re-run nor re-scored, and the sweep completes."""
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import FAST_PROBE_ARGS

from mlem_ray.evaluation.leaderboard import read as read_leaderboard

pytestmark = pytest.mark.ray

def sweep_cmd(out, space, *extra):
    return [sys.executable, "-m", "mlem_ray", "sweep", "--out", str(out), "--space", str(space), "--sequences", "200",
            *FAST_PROBE_ARGS, *extra]


def result_lines(trial_dir):
    path = trial_dir / "result.json"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_killed_driver_resumes_without_rerunning_or_rescoring(tmp_path, tiny_two_stage_space):
    space = tiny_two_stage_space
    out = tmp_path / "sweep"
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.Popen(sweep_cmd(out, space), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(read_leaderboard(out)) < 1:
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended before it could be killed (exit {proc.returncode})")
            time.sleep(0.5)
        assert len(read_leaderboard(out)) >= 1, "no trial was scored within 240 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.wait()
    before = read_leaderboard(out)
    scored_before = dict(zip(before["trial_id"], before["scored_at"]))
    finished_lines = {t: result_lines(out / "teacher" / t) for t in scored_before}

    done = subprocess.run(sweep_cmd(out, space, "--resume"), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep finished" in done.stdout
    board = read_leaderboard(out)
    assert board["trial_id"].is_unique
    teacher_trials = {p.name for p in (out / "teacher").iterdir() if p.is_dir()}
    mlem_trials = {p.name for p in (out / "mlem").iterdir() if p.is_dir()}
    assert len(teacher_trials) == 3 and len(mlem_trials) == 2  # no trial started twice under a new id
    assert set(board["trial_id"]) == teacher_trials | mlem_trials
    for trial, scored_at in scored_before.items():  # not re-scored, not re-run
        assert board.loc[board["trial_id"] == trial, "scored_at"].item() == scored_at
        assert result_lines(out / "teacher" / trial) == finished_lines[trial]
    for trial in teacher_trials:
        assert result_lines(out / "teacher" / trial) == 3
    # each stage's Optuna study, kept in the sweep directory, went on across the kill: one complete
    # trial per Tune trial, with its value; none left RUNNING
    import optuna

    from mlem_ray.sweep.optuna_storage import study_storage

    for stage, trials in (("teacher", teacher_trials), ("mlem", mlem_trials)):
        study = optuna.load_study(study_name=stage, storage=study_storage(out))
        done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert len(done) == len(trials) and all(math.isfinite(t.value) for t in done)
        assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
