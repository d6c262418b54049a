"""Kernel two-sample statistic: unbiased MMD² with an RBF kernel and a permutation test.

Private helpers of :mod:`probes.gap`. The pooled kernel matrix is built once;
each permutation is an indicator vector over the pooled sample, so all
permutations are evaluated with one matrix product per chunk instead of
rebuilding kernels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["median_bandwidth", "mmd2_unbiased", "pooled_sq_distances", "rbf_mmd2_test"]

# Permutation columns evaluated per matrix product: bounds the (N, chunk)
# temporary while keeping the product BLAS-3.
_PERM_CHUNK = 64
# Rows of the distance matrix finished per pass (see pooled_sq_distances).
_ROW_BLOCK = 256


def pooled_sq_distances(z: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between all rows of ``z`` (float64, zero diagonal)."""
    sq = np.einsum("ij,ij->i", z, z)
    d2 = z @ z.T
    # d2 = |a|^2 + |b|^2 - 2 a.b, in place, one block of rows at a time (its (rows, N)
    # temporaries stay in cache, where whole-matrix passes would stream through memory).
    for a in range(0, len(sq), _ROW_BLOCK):
        block = d2[a : a + _ROW_BLOCK]
        scale = sq[a : a + _ROW_BLOCK, None] + sq[None, :]
        block *= -2.0
        block += scale
        # The Gram trick loses a few ulps of ``scale``: identical rows must come out
        # at distance exactly 0, and nothing may be negative.
        scale *= 1e-12
        np.copyto(block, 0.0, where=block <= scale)
    np.fill_diagonal(d2, 0.0)
    return d2


def median_bandwidth(d2: np.ndarray) -> float:
    """Median heuristic: the median pairwise distance (not squared) among distinct pairs.

    This is MMD's convention (Gretton et al., JMLR 2012): sigma = median of
    ||z_i - z_j|| over the pairs i != j of the pooled sample. CKA's RBF kernel
    uses a different one (the median of all n^2 *squared* distances, zero
    diagonal included: :func:`probes._hsic.median_sq_distance`); the two must
    stay separate.

    When more than half the pairs coincide (duplicated rows) the median is 0;
    fall back to the median of the non-zero distances, and to 1.0 when every
    row is identical (the statistic is then 0 whatever the bandwidth).
    """
    n = d2.shape[0]
    if n < 2:
        return 1.0
    # Each distinct pair once, from the upper triangle (d2 is symmetric): the median of
    # the pairs i != j, where every pair appears twice, is the same. Select on squared
    # distances (monotone in the distance) and take square roots of the middle two.
    upper = np.concatenate([d2[i, i + 1 :] for i in range(n - 1)])
    lo, hi = (upper.size - 1) // 2, upper.size // 2
    mid = np.partition(upper, [lo, hi])[[lo, hi]]
    med = float(np.sqrt(mid).mean())
    if med > 0.0:
        return med
    dist = np.sqrt(upper)
    nonzero = dist[dist > 0.0]
    return float(np.median(nonzero)) if nonzero.size else 1.0


def mmd2_unbiased(k0: np.ndarray, row_sums: np.ndarray, in_x: np.ndarray, n: int, m: int):
    """Unbiased MMD² for one or more splits of the pooled sample.

    ``k0`` is the pooled kernel matrix with its diagonal zeroed, ``row_sums``
    its row sums, ``in_x`` an (N,) or (N, P) 0/1 float matrix marking the
    first sample. With a = in_x and b = 1 - a:
    sum_{i!=j in X} k = aᵀK₀a, sum_{X,Y} k = aᵀK₀1 - aᵀK₀a and
    sum_{i!=j in Y} k = 1ᵀK₀1 - 2 aᵀK₀1 + aᵀK₀a.
    """
    total = float(row_sums.sum())
    k0a = k0 @ in_x
    s_xx = np.einsum("i...,i...->...", in_x, k0a)
    a_r = row_sums @ in_x
    s_xy = a_r - s_xx
    s_yy = total - 2.0 * a_r + s_xx
    return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)


def rbf_mmd2_test(
    x: np.ndarray,
    y: np.ndarray,
    bandwidth: float | None,
    n_permutations: int,
    seed: int,
) -> tuple[float, float | None, float]:
    """Return (unbiased MMD², permutation p-value or None, bandwidth used).

    k(a, b) = exp(-‖a - b‖² / (2σ²)); σ = ``bandwidth`` or, when None, the
    median heuristic of :func:`median_bandwidth` (Gretton's convention: the
    median distance over distinct pairs of the pooled sample).
    """
    n, m = x.shape[0], y.shape[0]
    z = np.concatenate([x, y], axis=0)
    d2 = pooled_sq_distances(z)
    sigma = median_bandwidth(d2) if bandwidth is None else float(bandwidth)
    # In place: d2 is not needed again, and two fresh N x N arrays cost their page faults.
    k0 = np.exp(np.divide(d2, -2.0 * sigma * sigma, out=d2), out=d2)
    del d2
    np.fill_diagonal(k0, 0.0)
    row_sums = k0.sum(axis=1)

    in_x = np.zeros(n + m)
    in_x[:n] = 1.0
    observed = float(mmd2_unbiased(k0, row_sums, in_x, n, m))
    if n_permutations == 0:
        return observed, None, sigma

    rng = np.random.default_rng(seed)
    exceed = 0
    # A tiny relative slack so that a permutation reproducing the observed
    # split counts as ">=" despite summation-order rounding.
    threshold = observed - 1e-12 * max(1.0, abs(observed))
    for start in range(0, n_permutations, _PERM_CHUNK):
        p = min(_PERM_CHUNK, n_permutations - start)
        # The first n indices of each random permutation form the permuted X: as a set,
        # which the n smallest of N uniform keys give without sorting all N.
        keys = rng.random((p, n + m))
        picks = np.argpartition(keys, max(n - 1, 0), axis=1)[:, :n]
        ind = np.zeros((n + m, p))
        ind[picks.T, np.arange(p)[None, :]] = 1.0
        stats = mmd2_unbiased(k0, row_sums, ind, n, m)
        exceed += int(np.count_nonzero(stats >= threshold))
    p_value = (1.0 + exceed) / (1.0 + n_permutations)
    return observed, p_value, sigma
