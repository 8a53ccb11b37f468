"""Robust (several seeds per trial) and multi-objective (quality and cost) sweep stages, without Ray:
the lockstep runner of sweep/repeats.py with injected per-seed scores, ranked by the real
leaderboard and Optuna code; and the Pareto front as the report lists it."""
import threading

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from mlem_ray.config import make_config
from mlem_ray.evaluation import leaderboard
from mlem_ray.sweep import pareto
from mlem_ray.sweep.repeats import run_repeated
from mlem_ray.sweep.report import build_report
from mlem_ray.sweep.space import SearchSpace

STAGE = SearchSpace.from_dict({"method": "coles", "sweep": {"trials": 2, "epochs": 2, "repeats": 2, "selection": "probe", "finalists": 1},
                               "params": {"optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-2}}}).stages["coles"]


def fake_train(scores_by_seed):
    """A stand-in for the training loop: reports the injected probe_score of its seed each epoch,
    and a torch draw, to show that each seed keeps its own RNG stream across the hand-overs."""
    def train_one(cfg, reporter, resume):
        torch.manual_seed(cfg.train.seed)
        for epoch in range(2):
            draw = float(torch.rand(1))
            reporter.report({"epoch": epoch, "probe_score": scores_by_seed[cfg.train.seed][epoch], "draw": draw}, None)
    return train_one


def run_trial(scores_by_seed) -> list[dict]:
    cfgs = [make_config("coles").replace(**{"train.seed": k}) for k in range(2)]
    results = []
    run_repeated(fake_train(scores_by_seed), cfgs, lambda m, c: results.append(m), STAGE.sweep.base_metric,
                 STAGE.sweep.mode)
    return results


def test_repeats_rank_a_trial_whose_seeds_disagree_below_a_stable_one():
    assert STAGE.sweep.reported_metric == "probe_score_robust"  # what Tune, ASHA and Optuna compare
    unstable = run_trial({0: [0.70, 0.90], 1: [0.50, 0.30]})  # final mean 0.6, std 0.3
    stable = run_trial({0: [0.58, 0.61], 1: [0.60, 0.59]})  # final mean 0.6, std 0.01
    # one aggregated result per epoch, with the seeds' values, their mean and std
    assert len(unstable) == len(stable) == 2
    last_u, last_s = unstable[-1], stable[-1]
    assert last_u["probe_score_mean"] == pytest.approx(last_s["probe_score_mean"]) == pytest.approx(0.6)
    assert last_u["probe_score_std"] == pytest.approx(0.3) and last_s["probe_score_std"] == pytest.approx(0.01)
    assert (last_u["probe_score_seed0"], last_u["probe_score_seed1"]) == (0.90, 0.30)
    metric = STAGE.sweep.reported_metric
    rows = [{"trial_id": tid, "status": "ok", "selection_mode": STAGE.sweep.mode, "selection_value": r[-1][metric]}
            for tid, r in (("unstable", unstable), ("stable", stable))]
    assert [r["trial_id"] for r in leaderboard.ranked(rows, "selection")] == ["stable", "unstable"]
    assert leaderboard.pick_teacher(
        [{**r, "primary_mode": "max", "primary_value": 1.0} for r in rows], finalists=1)["trial_id"] == "stable"
    # Optuna, told the trials' final objective, prefers the stable config too
    study = optuna.create_study(direction="maximize" if STAGE.sweep.mode == "max" else "minimize")
    for r in rows:
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=r["selection_value"],
                                                  user_attrs={"id": r["trial_id"]}))
    assert study.best_trial.user_attrs["id"] == "stable"
    # ASHA reads the per-epoch result: at epoch 0 both means are 0.6 / 0.59, the robust scores 0.5 / 0.58
    assert unstable[0][metric] == pytest.approx(0.5) and stable[0][metric] == pytest.approx(0.58)


def test_each_seed_keeps_its_own_rng_stream_across_the_hand_overs():
    cfgs = [make_config("coles").replace(**{"train.seed": k}) for k in range(2)]
    draws = {0: [], 1: []}

    def train_one(cfg, reporter, resume):
        torch.manual_seed(cfg.train.seed)
        for epoch in range(2):
            draw = float(torch.rand(1))
            draws[cfg.train.seed].append(draw)
            reporter.report({"probe_score": draw}, None)

    run_repeated(train_one, cfgs, lambda m, c: None, "probe_score", "max")
    for k in range(2):
        torch.manual_seed(k)
        assert draws[k] == [float(torch.rand(1)) for _ in range(2)]


def test_a_stopped_trial_stops_every_seed():
    cfgs = [make_config("coles").replace(**{"train.seed": k}) for k in range(3)]
    before = threading.active_count()

    def stop(metrics, checkpoint):  # Tune ends a stopped trial's thread with SystemExit at its report
        raise SystemExit(0)

    with pytest.raises(SystemExit):
        run_repeated(fake_train({k: [0.5, 0.5] for k in range(3)}), cfgs, stop, "probe_score", "max")
    assert threading.active_count() == before  # no seed thread left waiting for its turn


def test_a_seed_that_fails_fails_the_trial():
    cfgs = [make_config("coles").replace(**{"train.seed": k}) for k in range(2)]

    def train_one(cfg, reporter, resume):
        reporter.report({"probe_score": 0.5}, None)
        if cfg.train.seed == 1:
            raise RuntimeError("seed 1 diverged")
        reporter.report({"probe_score": 0.5}, None)

    with pytest.raises(RuntimeError, match="seed 1 diverged"):
        run_repeated(train_one, cfgs, lambda m, c: None, "probe_score", "max")


# ---------------------------------------------------------------------------------------------
# two objectives


# (trial, in-trial probe score (max), parameter count (min)); dominated: c (b is better and cheaper),
# e (a is better at the same cost), f (NaN cost: never on the front)
TRIALS = [("a", 0.80, 5000.0), ("b", 0.70, 2000.0), ("c", 0.65, 3000.0), ("d", 0.50, 800.0), ("e", 0.75, 5000.0),
          ("f", 0.95, float("nan")), ("g", 0.85, 9000.0)]
FRONT = {"a", "b", "d", "g"}


def two_objective_board(tmp_path):
    rows = [{"trial_id": t, "stage": "coles", "method": "coles", "checkpoint": "", "params": "{}", "seed": 0,
             "reseed_of": "", "selection_metric": "probe_score", "selection_mode": "max", "selection_value": q,
             "val_loss": 1.0, "primary_metric": "tree_cv_mse_mean", "primary_mode": "min", "primary_value": 1 - q,
             "scored_at": float(i), "status": "ok", "error": "", "cost_metric": "cost_params", "cost_value": c,
             "tree_cv_mse_mean": 1 - q}
            for i, (t, q, c) in enumerate(TRIALS)]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    leaderboard.write_atomic(pd.DataFrame(rows), leaderboard.path(sweep))
    return sweep, rows


def test_non_dominated_is_the_pareto_front():
    _, rows = two_objective_board_rows()
    assert {r["trial_id"] for r in pareto.non_dominated(rows)} == FRONT


def two_objective_board_rows():
    return None, [{"trial_id": t, "selection_mode": "max", "selection_value": q, "cost_value": c} for t, q, c in TRIALS]


def test_two_objective_report_lists_exactly_the_non_dominated_trials(tmp_path):
    sweep, _ = two_objective_board(tmp_path)
    text = build_report(sweep)
    section = text.split("## Pareto front: coles", 1)[1].split("\n## ", 1)[0]
    listed = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][1:]
    assert set(listed) == FRONT and len(listed) == len(FRONT)
    assert (sweep / "report" / "pareto_coles.png").stat().st_size > 0


def test_knee_rule_picks_the_balanced_trial_first():
    _, rows = two_objective_board_rows()
    order = [r["trial_id"] for r in pareto.knee_order(pareto.non_dominated(rows))]
    # rescaled over the front: g (best, dearest) and d (cheapest, worst) lie far from the ideal point
    assert order[0] in ("a", "b") and order[-1] in ("d", "g")
    assert [r["trial_id"] for r in pareto.finalists(rows, 2)] == order[:2]


def test_multi_objective_stage_gives_optuna_a_metric_and_mode_list():
    stage = SearchSpace.from_dict({"method": "coles", "sweep": {"trials": 2, "epochs": 1, "selection": "probe", "finalists": 1,
                                                                "cost": "embed_time"},
                                   "params": {"optim.lr": {"type": "log_float", "low": 1e-3, "high": 1e-2}}}
                                  ).stages["coles"]
    assert stage.sweep.objectives == (["probe_score", "cost_embed_s_per_1k"], ["max", "min"])
    searcher = stage.searcher()
    assert [d.name for d in searcher._ot_study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert np.isfinite(searcher.suggest("t0")["optim.lr"])
