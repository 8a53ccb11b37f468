"""Downstream probes and embedding-quality measures (docs/method.md#evaluating-an-embedding)."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from mlem_ray.evaluation.probes import mean_predictor_mse, probe
from mlem_ray.evaluation.quality import anisotropy, intrinsic_dimension

ITERS = 60  # enough trees for these easy targets, keeps the file fast


@pytest.fixture(autouse=True)
def one_openmp_thread():
    # HGB's OpenMP threads spin-wait; on a shared 2-core box under load a 2-thread fit measured
    # ~50x slower than a 1-thread one. One thread keeps these tests fast and stable.
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def make_split(n, test_frac=0.25, val_frac=0.15, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    labels = np.where(u < test_frac, "test", np.where(u < test_frac + val_frac, "val", "train"))
    return labels.astype(object)


def linear_regression_data(n=400, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
    return x, y, make_split(n, seed=seed)


def test_linear_target_regression():
    x, y, split = linear_regression_data()
    lin = probe(x, y, split, "regression", kind="linear")
    assert lin["linear_test_r2"] > 0.9 and lin["linear_cv_r2_mean"] > 0.9
    assert lin["primary_metric"] == "linear_test_mse" and lin["primary_mode"] == "min"
    assert lin["n_train"] + lin["n_test"] == len(y)
    tree = probe(x, y, split, "regression", kind="tree", tree_iters=ITERS)
    floor = mean_predictor_mse(y, split)
    assert tree["tree_test_mse"] < 0.8 * floor
    assert lin["linear_test_mse"] < tree["tree_test_mse"]
    assert set(tree) == {
        "tree_cv_mse_mean", "tree_cv_mse_std", "tree_test_mse",
        "tree_cv_r2_mean", "tree_cv_r2_std", "tree_test_r2",
        "n_train", "n_test", "primary_metric", "primary_mode",
    }


def test_unlabelled_rows_are_ignored():
    x, y, split = linear_regression_data()
    y_nan = y.copy()
    y_nan[::5] = np.nan
    out = probe(x, y_nan, split, "regression", kind="linear")
    labelled = np.isfinite(y_nan)
    assert out["n_train"] == int((labelled & (split != "test")).sum())
    assert out["n_test"] == int((labelled & (split == "test")).sum())
    assert out["linear_test_r2"] > 0.9


def test_binary_separable_and_random():
    rng = np.random.default_rng(1)
    n = 300
    y = (rng.random(n) < 0.4).astype(np.float64)
    x = rng.normal(size=(n, 6))
    x[:, 0] += 4.0 * y
    split = make_split(n, seed=11)  # its own stream: the split must not track the label
    for kind in ("linear", "tree"):
        out = probe(x, y, split, "binary", kind=kind, tree_iters=ITERS)
        assert out[f"{kind}_test_roc_auc"] > 0.95 and out[f"{kind}_cv_roc_auc_mean"] > 0.95
        assert out["primary_metric"] == f"{kind}_test_roc_auc" and out["primary_mode"] == "max"
    noise = rng.normal(size=(n, 6))
    out = probe(noise, y, split, "binary", kind="linear")
    assert 0.35 < out["linear_test_roc_auc"] < 0.65
    assert 0.35 < out["linear_cv_roc_auc_mean"] < 0.65


def test_multiclass_separable_clusters():
    rng = np.random.default_rng(2)
    n, k = 300, 4
    y = rng.integers(0, k, size=n).astype(np.float64)
    centres = rng.normal(scale=5.0, size=(k, 5))
    x = centres[y.astype(int)] + rng.normal(size=(n, 5))
    split = make_split(n, seed=12)
    for kind in ("linear", "tree"):
        out = probe(x, y, split, "multiclass", kind=kind, tree_iters=30)
        assert out[f"{kind}_test_accuracy"] > 0.9 and out[f"{kind}_cv_accuracy_mean"] > 0.9


def test_one_class_test_set_gives_nan_auc():
    rng = np.random.default_rng(6)
    n = 80
    y = np.r_[np.zeros(30), np.ones(30), np.ones(20)]
    split = np.array(["train"] * 60 + ["test"] * 20, dtype=object)
    x = rng.normal(size=(n, 3))
    out = probe(x, y, split, "binary", kind="linear")
    assert np.isnan(out["linear_test_roc_auc"]) and np.isfinite(out["linear_cv_roc_auc_mean"])


def test_folds_shrink_for_small_class():
    rng = np.random.default_rng(3)
    n = 60
    y = np.zeros(n)
    y[:3] = 1.0  # 3 positives; 5-fold stratification is impossible
    split = np.array(["train"] * n, dtype=object)
    x = rng.normal(size=(n, 3))
    x[:, 0] += 5.0 * y
    out = probe(x, y, split, "binary", kind="linear", folds=5)
    assert out["n_test"] == 0 and out["linear_cv_roc_auc_mean"] > 0.9


def test_cv_never_sees_test_rows():
    x, y, split = linear_regression_data(n=200)
    a = probe(x, y, split, "regression", kind="tree", tree_iters=20)
    y_bad = y.copy()
    test = split == "test"
    y_bad[test] = 1e6
    x_bad = x.copy()
    x_bad[test] = -x_bad[test]
    b = probe(x_bad, y_bad, split, "regression", kind="tree", tree_iters=20)
    for key in ("tree_cv_mse_mean", "tree_cv_mse_std", "tree_cv_r2_mean", "tree_cv_r2_std"):
        assert a[key] == b[key]
    assert b["tree_test_mse"] > 1e10  # the corrupted test set is what the test score sees


def test_no_test_rows_uses_cv_primary():
    x, y, _ = linear_regression_data(n=100)
    split = np.array(["train"] * 80 + ["val"] * 20, dtype=object)
    out = probe(x, y, split, "regression", kind="linear")
    assert out["n_test"] == 0
    assert not any("_test_" in key for key in out)
    assert out["primary_metric"] == "linear_cv_mse_mean"
    assert out["primary_metric"] in out


def test_bad_inputs_are_refused():
    x, y, split = linear_regression_data(n=50)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probe(bad, y, split, "regression")
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        probe(bad, y, split, "regression")
    with pytest.raises(ValueError, match="unknown task"):
        probe(x, y, split, "ranking")
    with pytest.raises(ValueError, match="unknown probe kind"):
        probe(x, y, split, "regression", kind="knn")
    y_few = np.full_like(y, np.nan)
    y_few[np.flatnonzero(split != "test")[:3]] = 1.0
    with pytest.raises(ValueError, match="at least 4"):
        probe(x, y_few, split, "regression")


def test_mean_predictor_mse_by_hand():
    y = np.array([1.0, 3.0, np.nan, 5.0, 0.0, 4.0])
    split = np.array(["train", "val", "train", "train", "test", "test"], dtype=object)
    # pool mean = (1 + 3 + 5) / 3 = 3; test errors 9 and 1 -> 5
    assert mean_predictor_mse(y, split) == pytest.approx(5.0)


def test_anisotropy():
    rng = np.random.default_rng(4)
    iso = rng.normal(size=(3000, 32))
    iso -= iso.mean(axis=0)
    assert anisotropy(iso) < 0.2
    rank_one = np.outer(rng.normal(size=500), rng.normal(size=32))
    assert anisotropy(rank_one) == pytest.approx(1.0, abs=1e-6)
    shifted = iso + 10.0  # a shared offset (uncentred) dominates the spectrum
    assert anisotropy(shifted) > 0.5
    big = rng.normal(size=(12_000, 4))
    assert anisotropy(big) == anisotropy(big)  # subsample is seeded


def test_intrinsic_dimension_twonn():
    rng = np.random.default_rng(5)
    plane = rng.random(size=(3000, 2))
    basis, _ = np.linalg.qr(rng.normal(size=(10, 2)))
    embedded = plane @ basis.T + 3.0
    assert 1.6 < intrinsic_dimension(embedded) < 2.6
    gauss = rng.normal(size=(3000, 5))
    assert 4.0 < intrinsic_dimension(gauss) < 6.5
    # exact duplicates are dropped rather than producing inf / nan
    dup = np.vstack([gauss[:500], gauss[:50]])
    assert np.isfinite(intrinsic_dimension(dup))
    with pytest.raises(ValueError, match="NaN"):
        intrinsic_dimension(np.full((10, 3), np.nan))
