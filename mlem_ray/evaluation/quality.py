"""Embedding-quality measures (docs/method.md#embedding-quality).

* Anisotropy: how much of the embedding's spectrum one direction takes. A collapsed or
  "cone-shaped" embedding has one dominant singular value and scores near 1; an isotropic one
  spreads its spectrum and scores near 1/D.
* Intrinsic dimension (TwoNN): how many degrees of freedom the embedded point cloud actually uses,
  estimated from nearest-neighbour distance ratios only, so it never needs an N x N matrix.
"""
from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


def anisotropy(embeddings: np.ndarray, max_rows: int = 10_000, seed: int = 0) -> float:
    """Largest singular value over the sum of singular values of the uncentred embedding matrix.

    ``a = s_1 / sum_i s_i`` for the singular values ``s`` of X (rows = embeddings, not centred, so
    a shared offset direction counts as anisotropy). Ranges from 1/min(N, D) (flat spectrum) to 1
    (rank one). Computed on a seeded random subsample of at most ``max_rows`` rows for speed; the
    ratio is scale-free, so subsampling rows changes it only by sampling noise.
    """
    x = _as_finite_matrix(embeddings)
    x = _subsample(x, max_rows, seed)
    s = np.linalg.svd(x, compute_uv=False)
    total = float(s.sum())
    if total == 0.0:
        raise ValueError("anisotropy is undefined for an all-zero embedding matrix")
    return float(s[0] / total)


def intrinsic_dimension(embeddings: np.ndarray, max_points: int = 2000, seed: int = 0, discard: float = 0.1) -> float:
    """TwoNN intrinsic dimension as Facco et al. (2017, Sci. Rep. 7:12140) estimate it.

    For each point, r1 and r2 are the distances to its first and second nearest neighbours and
    ``mu = r2 / r1``. On a d-dimensional manifold with locally uniform density mu follows a Pareto
    law with CDF ``F(mu) = 1 - mu^(-d)``, so ``-log(1 - F(mu)) = d * log(mu)``: d is the slope of a
    line through the origin fitted (least squares) to the points (log mu_i, -log(1 - F_emp(mu_i)))
    with the empirical CDF ``F_emp(mu_(i)) = i / n`` of the sorted ratios. As the paper does, the
    largest ``discard`` share of the ratios is left out of the fit: they come from points whose
    neighbourhood is not uniform (outliers, curvature) and would dominate it.

    Duplicate points are removed first: a duplicate has r1 = 0, and embeddings of sequences that
    are one or two events long coincide often; keeping them made the maximum-likelihood form of
    this estimator give values below 1. Runs on a seeded random subsample of at most
    ``max_points`` distinct rows, with a k-NN query (k=2) per point, never an N x N matrix.
    """
    x = _as_finite_matrix(embeddings)
    x = np.unique(x, axis=0)  # sorted rows; the seeded subsample below decides which are used
    x = _subsample(x, max_points, seed)
    if x.shape[0] < 3:
        raise ValueError(f"intrinsic_dimension needs at least 3 distinct points, got {x.shape[0]}")
    # kneighbors() without X excludes each query point itself from its own neighbours.
    dist, _ = NearestNeighbors(n_neighbors=2).fit(x).kneighbors()
    mu = np.sort(dist[:, 1] / dist[:, 0])
    n = len(mu)
    keep = min(n - 1, max(2, int(np.floor(n * (1.0 - discard)))))  # F_emp = 1 at the last ratio
    log_mu = np.log(mu[:keep])
    # F_emp(mu_(i)) = i / n, i = 1..n; the kept ones never reach F = 1, so the log is finite.
    y = -np.log(1.0 - np.arange(1, keep + 1) / n)
    denom = float(np.dot(log_mu, log_mu))
    if denom <= 0.0:
        raise ValueError("intrinsic_dimension undefined: every point is equidistant from its two nearest neighbours")
    return float(np.dot(log_mu, y) / denom)


def _as_finite_matrix(embeddings) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    return x


def _subsample(x: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """At most ``max_rows`` rows drawn without replacement with a seeded generator."""
    if x.shape[0] <= max_rows:
        return x
    idx = np.random.default_rng(seed).choice(x.shape[0], size=max_rows, replace=False)
    return x[np.sort(idx)]
