"""Downstream probes on frozen embeddings (docs/method.md#downstream-probes).

The encoder is frozen; each sequence's embedding is a fixed feature vector. A probe model is fit on
the labelled training ids (split "train" or "val", the *train pool*) with k-fold cross-validation,
then refit on the whole train pool and scored once on the fixed test set (split "test"). Test rows
never enter the cross-validation or any fit.

Two probe kinds:

* ``"tree"``: gradient-boosted trees after ``MaxAbsScaler``. The published reference is LightGBM
  (1000 trees, lr 0.02, 50 leaves, depth 12, subsample / feature fraction 0.75); we use
  scikit-learn's ``HistGradientBoostingClassifier/Regressor`` instead (no extra dependency):
  ``max_iter=tree_iters``, ``learning_rate=0.05``, ``max_leaf_nodes=31``, ``early_stopping=False``.
* ``"linear"``: ``LogisticRegression(max_iter=2000)`` or ``Ridge`` after ``StandardScaler``.

Metrics: ROC AUC (binary), accuracy (multiclass), MSE and R^2 (regression).
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler

TASKS = ("binary", "multiclass", "regression")
KINDS = ("tree", "linear")
MIN_TRAIN_ROWS = 4
# Rows a fitted probe predicts at once: its working memory (HGB's binned copy, predict_proba's
# output) stays bounded however many test rows are scored.
PREDICT_CHUNK = 16_384

# Metric names per task, and whether lower is better ("min") or higher ("max").
_METRICS = {
    "binary": (("roc_auc", "max"),),
    "multiclass": (("accuracy", "max"),),
    "regression": (("mse", "min"), ("r2", "max")),
}


def probe(
    embeddings: np.ndarray,
    targets: np.ndarray,
    split: np.ndarray,
    task: str,
    kind: str = "tree",
    folds: int = 5,
    seed: int = 0,
    tree_iters: int = 300,
) -> dict:
    """Score a frozen embedding with a downstream probe.

    Rows with a NaN target are unlabelled and ignored. CV runs on the train pool (labelled rows with
    split "train"/"val"): ``StratifiedKFold`` for classification, ``KFold`` for regression, both
    shuffled with ``seed``; for classification the fold count drops to the smallest class size
    (never below 2). Then the probe is refit on the whole train pool and scored on the labelled
    "test" rows.

    Returns a flat dict keyed ``{kind}_cv_{metric}_mean``, ``{kind}_cv_{metric}_std`` and
    ``{kind}_test_{metric}`` (test keys omitted when there is no labelled test row), plus
    ``n_train``, ``n_test``, ``primary_metric`` (the test value of the task's first metric, or its
    CV mean without test rows) and ``primary_mode`` ("min" for mse, "max" otherwise).
    """
    x, y, pool, test = _prepare(embeddings, targets, split, task, kind)
    splitter = _splitter(y[pool], task, folds, seed)
    out: dict = {"n_train": int(pool.sum()), "n_test": int(test.sum())}

    names = [name for name, _ in _METRICS[task]]
    x_pool, y_pool = x[pool], y[pool]
    fold_scores = {name: [] for name in names}
    with warnings.catch_warnings():
        # A multiclass pool may hold a class smaller than the fold count; stratification then
        # warns but still splits correctly.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        fold_indices = list(splitter.split(x_pool, y_pool))
    for fit_idx, val_idx in fold_indices:
        model = _fit(x_pool[fit_idx], y_pool[fit_idx], task, kind, seed, tree_iters)
        for name, value in _score(model, x_pool[val_idx], y_pool[val_idx], task).items():
            fold_scores[name].append(value)
    for name in names:
        mean, std = _nan_mean_std(fold_scores[name])
        out[f"{kind}_cv_{name}_mean"] = mean
        out[f"{kind}_cv_{name}_std"] = std

    if test.any():
        model = _fit(x_pool, y_pool, task, kind, seed, tree_iters)
        for name, value in _score(model, x[test], y[test], task).items():
            out[f"{kind}_test_{name}"] = float(value)

    primary, mode = _METRICS[task][0]
    out["primary_metric"] = f"{kind}_test_{primary}" if test.any() else f"{kind}_cv_{primary}_mean"
    out["primary_mode"] = mode
    return out


def mean_predictor_mse(targets: np.ndarray, split: np.ndarray) -> float:
    """Test MSE of predicting the train-pool mean for every test row.

    ``mean((y_test - mean(y_pool))**2)`` over labelled rows, pool = split "train"/"val". Any
    regression probe must beat this floor to have learnt something from the embedding.
    """
    y = np.asarray(targets, dtype=np.float64)
    split = np.asarray(split, dtype=object)
    labelled = np.isfinite(y)
    pool = labelled & np.isin(split, ("train", "val"))
    test = labelled & (split == "test")
    if not pool.any() or not test.any():
        raise ValueError("mean_predictor_mse needs labelled train-pool and test rows")
    return float(np.mean((y[test] - y[pool].mean()) ** 2))


def _nan_mean_std(values) -> tuple[float, float]:
    """Mean and std over folds, skipping folds where the metric is undefined (NaN)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std())


def _prepare(embeddings, targets, split, task, kind):
    """Validate inputs; return (x, y, pool mask, test mask). Classification targets become ints."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if kind not in KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; expected one of {KINDS}")
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    split = np.asarray(split, dtype=object)
    if x.ndim != 2 or y.shape != (x.shape[0],) or split.shape != (x.shape[0],):
        raise ValueError(
            f"shape mismatch: embeddings {x.shape}, targets {y.shape}, split {split.shape}; "
            "expected (N, D), (N,), (N,)"
        )
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    labelled = np.isfinite(y)
    pool = labelled & np.isin(split, ("train", "val"))
    test = labelled & (split == "test")
    if pool.sum() < MIN_TRAIN_ROWS:
        n_pool = int(pool.sum())
        raise ValueError(f"need at least {MIN_TRAIN_ROWS} labelled train/val rows, got {n_pool}")
    if task != "regression":
        if not np.all(y[labelled] == np.round(y[labelled])):
            raise ValueError("classification targets must be integer class indices")
        _check_classes(y[pool], task)
    y = np.where(labelled, y, 0.0)  # placeholder for unlabelled rows; they are never used
    if task != "regression":
        y = y.astype(np.int64)
    return x, y, pool, test


def _check_classes(y_pool, task):
    """Pool needs >= 2 classes; binary exactly 2 with >= 2 rows each, so every fold fits."""
    classes, counts = np.unique(y_pool, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"{task} probe needs >= 2 classes in the train pool, got {len(classes)}")
    if task == "binary":
        if len(classes) != 2:
            raise ValueError(f"binary probe needs exactly 2 classes, got {len(classes)}")
        if counts.min() < 2:
            raise ValueError("binary probe needs at least 2 train-pool rows of each class")


def _splitter(y_pool, task, folds, seed):
    """K-fold splitter on the pool; classification folds = min(folds, smallest class), >= 2."""
    if task == "regression":
        return KFold(n_splits=max(2, min(folds, len(y_pool))), shuffle=True, random_state=seed)
    smallest = int(np.unique(y_pool, return_counts=True)[1].min())
    return StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)


def _make_model(task, kind, seed, tree_iters) -> Pipeline:
    """The probe pipeline: MaxAbs + HGB for "tree", Standard + logistic/ridge for "linear"."""
    if kind == "tree":
        params = dict(
            max_iter=tree_iters,
            learning_rate=0.05,
            max_leaf_nodes=31,
            early_stopping=False,
            random_state=seed,
        )
        if task == "regression":
            est = HistGradientBoostingRegressor(**params)
        else:
            est = HistGradientBoostingClassifier(**params)
        return make_pipeline(MaxAbsScaler(), est)
    est = Ridge() if task == "regression" else LogisticRegression(max_iter=2000)
    return make_pipeline(StandardScaler(), est)


def _fit(x, y, task, kind, seed, tree_iters) -> Pipeline:
    model = _make_model(task, kind, seed, tree_iters)
    model.fit(x, y)
    return model


def _chunked(predict, x) -> np.ndarray:
    """predict(x) in chunks of PREDICT_CHUNK rows."""
    return np.concatenate([predict(x[i : i + PREDICT_CHUNK]) for i in range(0, len(x), PREDICT_CHUNK)])


def _score(model, x, y, task) -> dict:
    """Metrics of a fitted probe on (x, y); undefined ones (one-class AUC, flat-y R^2) are NaN."""
    if task == "binary":
        if len(np.unique(y)) < 2:
            return {"roc_auc": float("nan")}
        # Positive class = the larger label (column 1 of predict_proba; the pool has both classes).
        score = _chunked(lambda part: model.predict_proba(part)[:, 1], x)
        return {"roc_auc": float(roc_auc_score(y == model.classes_[1], score))}
    if task == "multiclass":
        return {"accuracy": float(accuracy_score(y, _chunked(model.predict, x)))}
    pred = _chunked(model.predict, x)
    mse = float(np.mean((y - pred) ** 2))
    var = float(np.var(y))
    return {"mse": mse, "r2": 1.0 - mse / var if var > 0 else float("nan")}
