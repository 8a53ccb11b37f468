"""`--budget`: the sizing rule of sweep/budget.py spends about the budget, never more, and grows
or shrinks the stages in the stated order; bad budgets are refused with one line."""
import subprocess
import sys

import pytest

from mlem_ray.errors import SweepError
from mlem_ray.sweep import budget
from mlem_ray.sweep.space import SearchSpace

STAGE = SearchSpace.from_dict({"method": "coles", "sweep": {"trials": 4, "epochs": 3, "scheduler": "asha",
                                                            "reduction_factor": 2, "grace_period": 1, "finalists": 2},
                               "params": {"optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-2}}}).stages["coles"]


def spent(size, t_step, t_eval):
    return (budget.total_epochs(STAGE, size.trials, size.epochs) * (size.steps_per_epoch * t_step + t_eval)
            + size.trials * budget.TRIAL_OVERHEAD_S)


def test_asha_epochs_count_the_rungs():
    # 8 trials, rungs at 1, 2, 4, then 8: 8 + 4 + 2*2 + 1*4 epochs
    assert budget.total_epochs(STAGE, 8, 8) == 8 + 4 + 4 + 4
    none = SearchSpace.from_dict({"method": "coles", "sweep": {"trials": 4, "epochs": 3, "scheduler": "none",
                                                               "finalists": 2}}).stages["coles"]
    assert budget.total_epochs(none, 8, 8) == 64


@pytest.mark.parametrize("seconds", [40.0, 300.0, 3000.0])
def test_sized_stage_fits_the_budget_and_uses_most_of_it(seconds):
    size = budget.size_stage(STAGE, seconds, seconds, t_step=0.02, t_eval=0.3, full_epoch_steps=50)
    assert spent(size, 0.02, 0.3) <= seconds
    assert size.steps_per_epoch == 50  # full passes whenever they fit
    # one more trial or epoch would not fit (or a limit was reached): the budget is used
    grown = [budget.StageSize(size.trials + 1, size.epochs, 50, seconds, 0.02, 0.3),
             budget.StageSize(size.trials, size.epochs + 1, 50, seconds, 0.02, 0.3)]
    assert all(spent(g, 0.02, 0.3) > seconds for g in grown) or size.epochs == budget.MAX_EPOCHS
    assert size.trials >= STAGE.sweep.trials and size.epochs >= STAGE.sweep.epochs


def test_a_small_budget_shortens_epochs_first():
    size = budget.size_stage(STAGE, 60.0, 60.0, t_step=0.05, t_eval=0.1, full_epoch_steps=1000)
    assert (size.trials, size.epochs) == (4, 3) and budget.MIN_STEPS <= size.steps_per_epoch < 1000
    assert spent(size, 0.05, 0.1) <= 60.0


def test_applied_sizes_reach_the_trial_config():
    size = budget.StageSize(6, 5, 17, 100.0, 0.01, 0.1)
    stage = budget.apply(STAGE, size)
    cfg = stage.config({"optim.lr": 1e-3}, {"data.path": "x"})
    assert (stage.sweep.trials, cfg.train.epochs, cfg.train.steps_per_epoch) == (6, 5, 17)


def test_budget_text():
    assert budget.parse("2h").seconds == 7200 and budget.parse("90m").seconds == 5400
    assert budget.parse("1.5gpu-h") == budget.Budget(5400.0, gpu=True)
    assert budget.parse("1.5gpu-h").wall_seconds(3) == 1800
    for bad in ("", "2", "-1h", "2 days", "h"):
        with pytest.raises(SweepError):
            budget.parse(bad)


def test_a_bad_budget_exits_2_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "mlem_ray", "sweep", "--out", str(out), "--budget", "2 days"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--budget" in proc.stderr
    assert not out.exists()
