"""`mlem-ray sweep --warm-start`: an earlier sweep's best config is suggested first, its study's
trials seed the new study, and an incompatible space is refused before anything is written."""
import json
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import yaml

from mlem_ray.evaluation import leaderboard
from mlem_ray.sweep import optuna_storage, warm_start
from mlem_ray.sweep.space import SearchSpace

SPACE = {"method": "coles", "sweep": {"trials": 3, "epochs": 1, "selection": "probe", "finalists": 1},
         "params": {"optim.lr": {"type": "log_float", "low": 1e-4, "high": 1e-2},
                    "model.hidden": {"type": "int", "low": 16, "high": 64, "step": 16}}}
# downstream MSE (lower is better): t2 is the best
EARLIER = [("t1", 3e-4, 32, 0.50), ("t2", 2e-3, 48, 0.20), ("t3", 5e-3, 16, 0.40)]


def earlier_sweep(tmp_path, space=SPACE):
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "space.yaml").write_text(yaml.safe_dump(space))
    rows = [{"trial_id": t, "stage": "coles", "method": "coles", "params": json.dumps({"optim.lr": lr, "model.hidden": h}),
             "reseed_of": "", "status": "ok", "primary_metric": "tree_cv_mse_mean", "primary_mode": "min",
             "primary_value": v, "selection_metric": "probe_score", "selection_mode": "max", "selection_value": 1 - v}
            for t, lr, h, v in EARLIER]
    leaderboard.write_atomic(pd.DataFrame(rows), leaderboard.path(out))
    # its Optuna study, as the sweep keeps it (objective named)
    study = optuna.create_study(study_name="coles", storage=optuna_storage.study_storage(out), direction="maximize")
    study.set_metric_names(["probe_score"])
    stage = SearchSpace.from_dict(space).stages["coles"]
    for _, lr, h, v in EARLIER:
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": lr, "model.hidden": h},
                                                  distributions=stage.optuna_space(), value=1 - v))
    return out


def test_warm_start_enqueues_the_earlier_best_config_first(tmp_path):
    earlier = earlier_sweep(tmp_path)
    stage = SearchSpace.from_dict(SPACE).stages["coles"].resolved("probe")
    plan = warm_start.plan(str(earlier), {"coles": stage})
    assert plan["coles"].points[0] == {"optim.lr": 2e-3, "model.hidden": 48}
    assert [p["optim.lr"] for p in plan["coles"].points] == [2e-3, 5e-3, 3e-4]  # best first
    new = tmp_path / "new"
    new.mkdir()
    seeded = warm_start.seed_study(optuna_storage.study_storage(new), "coles", stage, plan["coles"])
    searcher = stage.searcher(storage=optuna_storage.study_storage(new), study_name="coles",
                              points_to_evaluate=plan["coles"].points)
    assert searcher.suggest("first") == {"optim.lr": 2e-3, "model.hidden": 48}
    # the whole earlier study is in the new one, so TPE starts from its observations
    assert seeded == 3
    study = optuna.load_study(study_name="coles", storage=optuna_storage.study_storage(new))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.value for t in done) == sorted(1 - v for *_, v in EARLIER)


def test_warm_start_from_a_journal_enqueues_its_best_trial(tmp_path):
    earlier = earlier_sweep(tmp_path)
    stage = SearchSpace.from_dict(SPACE).stages["coles"].resolved("probe")
    plan = warm_start.plan(str(optuna_storage.path(earlier)), {"coles": stage})
    # the study's own best (its objective, the in-trial score 1 - v, is maximised): t2
    assert plan["coles"].points[0] == {"optim.lr": 2e-3, "model.hidden": 48}
    assert len(plan["coles"].trials) == 3


def test_a_changed_objective_enqueues_but_does_not_import_the_study(tmp_path):
    earlier = earlier_sweep(tmp_path)
    changed = {**SPACE, "sweep": {**SPACE["sweep"], "repeats": 2}}  # objective is now probe_score_robust
    stage = SearchSpace.from_dict(changed).stages["coles"].resolved("probe")
    plan = warm_start.plan(str(earlier), {"coles": stage})
    new = tmp_path / "new"
    new.mkdir()
    assert warm_start.seed_study(optuna_storage.study_storage(new), "coles", stage, plan["coles"]) == 0
    assert plan["coles"].points[0] == {"optim.lr": 2e-3, "model.hidden": 48}


@pytest.mark.parametrize("change, says", [
    ({"params": {**SPACE["params"], "objective.margin": {"type": "float", "low": 0.2, "high": 1.0}}},
     "now sweeps objective.margin"),
    ({"params": {"optim.lr": SPACE["params"]["optim.lr"],
                 "model.hidden": {"type": "int", "low": 64, "high": 128, "step": 16}}}, "outside this space's range"),
    ({"method": "generative"}, "no stage of it matches"),
])
def test_an_incompatible_space_is_refused_with_exit_2_one_line_nothing_written(tmp_path, change, says):
    earlier = earlier_sweep(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, **change}))
    out = tmp_path / "new_sweep"
    proc = subprocess.run([sys.executable, "-m", "mlem_ray", "sweep", "--out", str(out), "--space", str(space),
                           "--warm-start", str(earlier), "--sequences", "100"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "--warm-start" in lines[0]
    assert not out.exists()
