"""The in-trial selection score: a scale-free score of an encoder's embedding, cheap enough to
compute inside a trial every epoch, so that the sampler, early stopping, the checkpoint kept per
trial and the finalists all rank trials by what the embedding is worth (docs/method.md#what-a-sweep-varies-and-what-ranks-trials), not by a
loss whose scale the sweep itself varies.

- ``probe``: a fixed, seeded subset of the *labelled training pool* (splits train and val; never
  test) is embedded; a standardised linear probe (ridge regression, or logistic regression) is
  scored by k-fold cross-validation. ``probe_score`` is oriented so that higher is better: R^2
  for regression, ROC AUC for binary, accuracy for multiclass targets.
- ``rankme``: RankMe (Garrido et al., ICML 2023), the effective rank of the embedding matrix of a
  fixed subset of the training pool; label-free.

The trial always reports both where it can (rankme needs no labels), and the time they took.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..data.prepared import EventSequences

METRICS = ("probe", "rankme", "val_loss")
# What Tune sees for each sweep.metric, and its direction.
REPORTED = {"probe": ("probe_score", "max"), "rankme": ("rankme", "max"), "val_loss": ("val_loss", "min")}
DEFAULT_SIZE = 4096
MIN_LABELLED = 20  # fewer labelled training-pool sequences than this: no probe, RankMe instead


def rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    """exp(entropy of the normalised singular values) of z (n x d): 1 for a rank-1 matrix, k for
    k orthogonal directions of equal norm, at most min(n, d)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or min(z.shape) == 0 or not np.isfinite(z).all():
        return float("nan")
    s = np.linalg.svd(z, compute_uv=False)
    if s.sum() <= 0:
        return float("nan")
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def default_metric(seqs: EventSequences) -> str:
    """probe when the data set has enough labelled training-pool sequences, else rankme."""
    return "probe" if len(seqs.labelled("train", "val")) >= MIN_LABELLED else "rankme"


def subset_rows(seqs: EventSequences, labelled: bool, size: int = DEFAULT_SIZE, seed: int = 0) -> np.ndarray:
    """A fixed subset (sorted row indices) of the training pool, labelled rows only when asked.
    Depends only on the data set, `size` and `seed`, so every trial of a sweep scores the same rows."""
    pool = seqs.labelled("train", "val") if labelled else seqs.indices("train", "val")
    if len(pool) <= size:
        return np.sort(pool)
    return np.sort(np.random.default_rng(seed).choice(pool, size=size, replace=False))


def linear_probe_cv(x: np.ndarray, y: np.ndarray, task: str, folds: int = 3, seed: int = 0) -> dict:
    """k-fold CV of a standardised linear probe -> {"probe_score": higher-is-better, and the task's
    own metric(s)}. Non-finite embeddings score NaN rather than raising."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, mean_squared_error, r2_score, roc_auc_score
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not np.isfinite(x).all():
        return {"probe_score": float("nan")}
    if task == "regression":
        splitter, y = KFold(folds, shuffle=True, random_state=seed), y.astype(np.float64)
    else:
        y = y.astype(np.int64)
        smallest = int(np.bincount(y).min(initial=len(y)) if len(y) else 0)
        splitter = StratifiedKFold(max(2, min(folds, smallest or 2)), shuffle=True, random_state=seed)
    truth, pred = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fit, val in splitter.split(x, y):
            if task == "regression":
                model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x[fit], y[fit])
                pred.append(model.predict(x[val]))
            else:
                model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x[fit], y[fit])
                pred.append(model.predict_proba(x[val])[:, 1] if task == "binary" else model.predict(x[val]))
            truth.append(y[val])
    truth, pred = np.concatenate(truth), np.concatenate(pred)
    if task == "regression":
        mse = float(mean_squared_error(truth, pred))
        return {"probe_score": float(r2_score(truth, pred)), "probe_mse": mse}
    if task == "binary":
        auc = float(roc_auc_score(truth, pred)) if len(np.unique(truth)) == 2 else float("nan")
        return {"probe_score": auc, "probe_roc_auc": auc}
    acc = float(accuracy_score(truth, pred))
    return {"probe_score": acc, "probe_accuracy": acc}


@dataclass
class SelectionScorer:
    """Scores an encoder on a fixed subset of the training pool; built once per trial."""

    seqs: EventSequences
    metric: str  # probe | rankme | val_loss (val_loss: RankMe is still reported)
    max_len: int
    size: int = DEFAULT_SIZE
    folds: int = 3
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self):
        labelled = self.metric == "probe"
        if labelled and len(self.seqs.labelled("train", "val")) < MIN_LABELLED:
            from ..config import ConfigError

            raise ConfigError(f"selection metric 'probe' needs >= {MIN_LABELLED} labelled training sequences; "
                              f"{self.seqs.path} has {len(self.seqs.labelled('train', 'val'))}: use rankme")
        self.rows = subset_rows(self.seqs, labelled, self.size, self.seed)

    def __call__(self, encoder, device) -> dict:
        from .embed import embed_rows

        t0 = time.perf_counter()
        was_training = encoder.training
        z = embed_rows(encoder, self.seqs, self.rows, self.max_len, batch_size=self.batch_size, device=device)
        encoder.train(was_training)
        out = {"rankme": rankme(z)}
        if self.metric == "probe":
            out.update(linear_probe_cv(z, self.seqs.targets[self.rows], self.seqs.schema.task, self.folds, self.seed))
        out["selection_seconds"] = time.perf_counter() - t0
        return out
