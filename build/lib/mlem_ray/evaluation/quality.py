"""Embedding-quality measures (METHOD.md section 5, "Embedding quality").

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


def intrinsic_dimension(embeddings: np.ndarray, max_points: int = 2000, seed: int = 0) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017, Sci. Rep. 7:12140), maximum-likelihood form.

    For each point, r1 and r2 are the distances to its first and second nearest neighbours and
    ``mu = r2 / r1``. On a d-dimensional manifold with locally uniform density mu follows a Pareto
    law ``f(mu) = d * mu^(-d-1)`` (mu >= 1), whose MLE is ``d = n / sum_i log(mu_i)``. Points with
    r1 == 0 (exact duplicates) are dropped since their ratio is undefined. Runs on a seeded random
    subsample of at most ``max_points`` rows, with a tree/brute k-NN query (k=2) per point, never a
    full N x N distance matrix.
    """
    x = _as_finite_matrix(embeddings)
    x = _subsample(x, max_points, seed)
    if x.shape[0] < 3:
        raise ValueError(f"intrinsic_dimension needs at least 3 points, got {x.shape[0]}")
    # kneighbors() without X excludes each query point itself from its own neighbours.
    dist, _ = NearestNeighbors(n_neighbors=2).fit(x).kneighbors()
    r1, r2 = dist[:, 0], dist[:, 1]
    keep = r1 > 0
    log_mu = np.log(r2[keep] / r1[keep])
    total = float(log_mu.sum())
    if log_mu.size == 0 or total <= 0.0:
        raise ValueError("intrinsic_dimension undefined: no distinct 1st/2nd neighbour distances")
    return float(log_mu.size / total)


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
