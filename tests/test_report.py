"""`mlem-ray report` (mlem_ray/sweep/report.py) on a synthetic sweep directory: a copy of the quick
search space and a hand-written leaderboard (two stages, a re-seeded best trial, extra columns).
No Ray, no training: the numbers are chosen so the expected text can be computed by hand."""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from mlem_ray.sweep.report import ReportError, build_report
from mlem_ray.sweep.space import SearchSpace

QUICK = Path(__file__).resolve().parents[1] / "search_spaces" / "quick.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Where in each range the i-th trial's params lie (0: low end, 1: high end).
FRACTIONS = (0.0, 0.35, 0.7, 1.0)
# Primary values (tree_cv_mse_mean, lower is better): teacher t2 and mlem m1 are best.
TEACHER = {"t0": 0.50, "t1": 0.42, "t2": 0.31, "t3": 0.47}
MLEM = {"m0": 0.30, "m1": 0.20, "m2": 0.26, "m3": 0.28}
RESEEDS = {"m1-seed1": 0.22, "m1-seed2": 0.25}  # re-runs of m1 with seeds 1 and 2


def value_in(dist, frac: float):
    """A value inside an Optuna distribution, at fraction `frac` of its range (on its step grid)."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(frac * (len(dist.choices) - 1))]
    if isinstance(dist, IntDistribution):
        steps = (dist.high - dist.low) // dist.step
        return dist.low + dist.step * round(frac * steps)
    assert isinstance(dist, FloatDistribution)
    if dist.log:
        return float(dist.low * (dist.high / dist.low) ** frac)
    return float(dist.low + frac * (dist.high - dist.low))


def params_for(space: SearchSpace, stage: str, i: int) -> dict:
    frac = FRACTIONS[i % len(FRACTIONS)]
    return {k: value_in(d, frac) for k, d in space.stages[stage].optuna_space().items()}


def row(trial_id, stage, method, value, params, order, seed=0, reseed_of=""):
    return {
        "trial_id": trial_id, "stage": stage, "method": method, "checkpoint": f"/sweep/{stage}/{trial_id}/ckpt",
        "val_loss": 1.0 + value, "params": json.dumps(params, sort_keys=True), "seed": seed,
        "primary_metric": "tree_cv_mse_mean", "primary_mode": "min", "primary_value": value,
        "scored_at": 1_700_000_000.0 + order, "reseed_of": reseed_of,
        "tree_cv_mse_mean": value, "tree_test_mse": value + 0.01, "tree_test_r2": 1.0 - value,
        "linear_test_mse": value + 0.1, "anisotropy": 0.3, "intrinsic_dim": 5.0,
        "some_future_column": "tolerated",  # unknown extras must not break the report
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    shutil.copyfile(QUICK, tmp_path / "space.yaml")
    space = SearchSpace.load(tmp_path / "space.yaml")
    rows, order = [], 0
    for stage, method, values in (("teacher", "coles", TEACHER), ("mlem", "mlem", MLEM)):
        for i, (trial_id, value) in enumerate(values.items()):
            rows.append(row(trial_id, stage, method, value, params_for(space, stage, i), order))
            order += 1
    best_params = json.loads(rows[len(TEACHER) + 1]["params"])  # m1's
    for seed, (trial_id, value) in enumerate(RESEEDS.items(), start=1):
        rows.append(row(trial_id, "mlem", "mlem", value, best_params, order, seed=seed, reseed_of="m1"))
        order += 1
    pd.DataFrame(rows).to_parquet(tmp_path / "leaderboard.parquet", index=False)
    return tmp_path


def test_leaderboard_names_methods_best_trials_and_seed_statistics(sweep):
    text = build_report(sweep)
    assert (sweep / "report" / "report.md").read_text(encoding="utf-8") == text
    # Re-seeds are not trials: 4 scored trials each; the best by primary value (min).
    assert "| coles | teacher | 4 | t2 |" in text
    assert "| mlem | mlem | 4 | m1 |" in text
    # m1 over its 2 new seeds only (the selection seed's value is biased by the selection), sample std.
    seeds = list(RESEEDS.values())
    mean, std = statistics.mean(seeds), statistics.stdev(seeds)
    assert f"{mean:.4g} +- {std:.4g}" in text
    assert f"| mlem | mlem | 4 | m1 | {mean:.4g} +- {std:.4g} | 2 |" in text
    assert "mlem: mean +- std over 2 new seeds" in text and "seed it was selected with is left out" in text
    # The teacher was not re-seeded: a single value and the hint how to re-seed.
    assert f"| coles | teacher | 4 | t2 | {TEACHER['t2']:.4g} | 1 |" in text
    assert "--reseed" in text
    # Downstream metrics side by side, including the test-set ones, and the best params.
    assert "tree_test_mse" in text and "tree_test_r2" in text
    assert "some_future_column" not in text
    assert "coles (teacher) `t2`:" in text and "optim.lr=" in text


def test_importances_per_stage_with_enough_trials(sweep):
    text = build_report(sweep)
    section = text.split("## Parameter importances", 1)[1].split("## Plots", 1)[0]
    for stage in ("teacher", "mlem"):
        part = section.split(f"### {stage}", 1)[1].split("###", 1)[0]
        assert "4 trials:" in part, part
        assert "- optim.lr: " in part
    assert "Could not compute" not in section


def test_importances_skip_small_stages_in_one_line(sweep):
    board = pd.read_parquet(sweep / "leaderboard.parquet")
    board = board[~board["trial_id"].isin(["t0", "t1"])]  # teacher: 2 trials left
    board.to_parquet(sweep / "leaderboard.parquet", index=False)
    text = build_report(sweep)
    part = text.split("### teacher", 1)[1].split("###", 1)[0]
    assert "Skipped: 2 scored trial(s); importances need >= 3." in part


def test_plots_are_png_files(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("elsewhere")
    build_report(sweep, out_dir=out)
    for name in ("metric_vs_trial.png", "methods.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_SIGNATURE, name
    assert (out / "report.md").exists()


def test_without_space_file_the_leaderboard_still_reports(sweep):
    (sweep / "space.yaml").unlink()
    text = build_report(sweep)
    assert "| mlem | mlem | 4 | m1 |" in text
    assert "Skipped: no space.yaml" in text


def test_directory_without_leaderboard_is_refused(tmp_path):
    with pytest.raises(ReportError, match=r"no leaderboard\.parquet: is this a sweep directory"):
        build_report(tmp_path)
    with pytest.raises(ReportError, match="no such directory"):
        build_report(tmp_path / "missing")


def test_empty_leaderboard_is_refused(tmp_path):
    pd.DataFrame({"trial_id": pd.Series([], dtype=str), "method": pd.Series([], dtype=str),
                  "primary_value": pd.Series([], dtype=float)}).to_parquet(tmp_path / "leaderboard.parquet")
    with pytest.raises(ReportError, match="empty"):
        build_report(tmp_path)
    assert issubclass(ReportError, ValueError)
