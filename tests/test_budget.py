"""Step budgets are deterministic: the same seed and budget give the same run, loss for loss and
score for score, whatever the machine's load."""
import numpy as np
import pytest

from mlem_ray.config import make_config
from mlem_ray.evaluation.evaluate import evaluate_checkpoint
from mlem_ray.training import LocalReporter, train

SMALL = {"model.hidden": 16, "model.decoder_width": 16, "model.decoder_layers": 1, "model.decoder_ff": 32,
         "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20, "train.epochs": 50,
         "train.steps_per_epoch": 3, "train.budget_steps": 7, "model.dropout": 0.1}


@pytest.fixture(scope="module")
def tiny(pendulum_data):
    return pendulum_data(160, seed=5)


class Recorder:
    def __init__(self, inner):
        self.inner, self.rows = inner, []

    def report(self, metrics, checkpoint):
        self.rows.append(metrics)
        self.inner.report(metrics, checkpoint)


@pytest.mark.parametrize("method", ["coles", "generative"])
def test_same_seed_and_step_budget_give_identical_losses_and_scores(tiny, tmp_path, method):
    runs = []
    for name in ("a", "b"):
        rec = Recorder(LocalReporter(tmp_path / name, stream=None))
        train(make_config(method, {**SMALL, "data.path": str(tiny)}), rec)
        scores = evaluate_checkpoint(tmp_path / name / "last", tiny, kinds=("tree",), folds=2, tree_iters=20)
        runs.append((rec.rows, scores))
    (rows_a, scores_a), (rows_b, scores_b) = runs
    # 7 steps at 3 per epoch: two full epochs and one of a single step, then the budget stops it.
    assert [r["steps"] for r in rows_a] == [3, 6, 7]
    for key in ("train_loss", "val_loss"):
        assert [r[key] for r in rows_a] == [r[key] for r in rows_b]
    assert len({r["train_loss"] for r in rows_a}) == 3  # the losses do change
    numeric = {k for k, v in scores_a.items() if isinstance(v, float)}
    assert {k: scores_a[k] for k in numeric} == {k: scores_b[k] for k in numeric}
    assert np.isfinite(scores_a["tree_test_mse"])


def test_resume_past_the_budget_trains_no_more(tiny, tmp_path):
    cfg = make_config("coles", {**SMALL, "data.path": str(tiny)})
    train(cfg, LocalReporter(tmp_path / "r", stream=None))
    rec = Recorder(LocalReporter(tmp_path / "r", stream=None))
    train(cfg, rec, resume=tmp_path / "r" / "last")
    assert rec.rows == []
