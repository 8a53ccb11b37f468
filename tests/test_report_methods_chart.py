"""The report's methods chart (sweep/report_plots.py draw_methods): an axis fitted to the values, so a
0.01 AUC gap between methods is visible, error bars where a best config was re-seeded, and the
aggregates baseline (baseline.json) as a line to judge them against."""
from __future__ import annotations

import pandas as pd
import pytest

from mlem_ray.sweep.report_plots import draw_methods, figure
from mlem_ray.sweep.report_stats import MethodSummary


def summary(stage: str, values: list[float], metric: str = "tree_cv_roc_auc_mean") -> MethodSummary:
    seeds = pd.DataFrame({"primary_value": values, "reseed_of": ["best"] * len(values) if len(values) > 1 else [""]})
    return MethodSummary(stage=stage, method=stage, trials=4, metric=metric, mode="max",
                         best={"trial_id": "best", "primary_value": values[0]}, seeds=seeds)


BASELINE = {"primary_metric": "tree_cv_roc_auc_mean", "primary_mode": "max", "primary_value": 0.795, "features": 9}


def draw(groups, baseline=None):
    ax = figure().add_subplot(1, 1, 1)
    draw_methods(ax, groups, baseline)
    return ax


def test_axis_is_fitted_to_values_a_hundredth_apart():
    groups = [summary("coles", [0.799, 0.801, 0.803]), summary("mlem", [0.812])]
    low, high = draw(groups, BASELINE).get_ylim()
    assert 0.75 < low < 0.795 and 0.812 < high < 0.85  # baseline, error bars and points all inside
    assert (0.812 - 0.801) / (high - low) > 0.2  # the gap takes a fifth of the axis or more, not 1 %


def test_baseline_is_a_labelled_horizontal_line():
    ax = draw([summary("coles", [0.80]), summary("mlem", [0.81])], BASELINE)
    lines = [line for line in ax.get_lines() if "aggregates" in str(line.get_label())]
    assert len(lines) == 1
    assert set(lines[0].get_ydata()) == {0.795} and "0.795" in lines[0].get_label()
    assert "aggregates baseline" in [t.get_text() for t in ax.get_legend().get_texts()][0]


def test_baseline_of_another_metric_or_none_draws_no_line():
    for baseline in (None, dict(BASELINE, primary_metric="tree_cv_accuracy_mean")):
        ax = draw([summary("coles", [0.80])], baseline)
        assert not [line for line in ax.get_lines() if "aggregates" in str(line.get_label())]
        assert ax.get_legend() is None


def test_error_bars_only_where_the_best_was_reseeded():
    ax = draw([summary("coles", [0.79, 0.80, 0.81]), summary("mlem", [0.82])], BASELINE)
    bars = [c for c in ax.containers if c.has_yerr]
    assert len(bars) == 1
    (segments,) = bars[0].lines[2]
    (x0, y0), (x1, y1) = segments.get_segments()[0]
    assert x0 == x1 == 0 and y0 == pytest.approx(0.79) and y1 == pytest.approx(0.81)  # mean 0.80 +- std 0.01


def test_one_value_and_no_baseline_still_gets_a_usable_axis():
    low, high = draw([summary("coles", [0.5])]).get_ylim()
    assert low < 0.5 < high and high - low < 0.2
