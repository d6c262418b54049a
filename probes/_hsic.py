"""Kernels and HSIC estimators behind :mod:`probes.similarity`.

Everything here works on float64 numpy arrays that are already validated.
Two families of estimators of the Hilbert-Schmidt Independence Criterion:

* from Gram matrices K, L (n x n), for any kernel: the biased
  ``tr(KHLH) / (n-1)^2`` (Gretton et al. 2005) and the unbiased estimator of
  Song et al. (JMLR 2012);
* for the linear kernel, from feature matrices X (n x p), Y (n x q) without
  forming any n x n matrix: every term of both estimators is rewritten with
  products such as ``X^T Y`` (p x q), so time is O(n (p + q)^2) and memory
  O((p + q)^2).
"""

from __future__ import annotations

import numpy as np

from probes._mmd import pooled_sq_distances

__all__ = [
    "center_columns",
    "gram_linear_np",
    "gram_rbf_np",
    "hsic_gram",
    "hsic_linear_features",
    "median_sq_distance",
    "ratio",
]


def center_columns(x: np.ndarray) -> np.ndarray:
    """Subtract the column means; columns that are exactly constant become exactly 0.

    ``x - x.mean(0)`` on a constant column can leave rounding noise (~1e-17)
    when the mean is not exactly representable; an RBF bandwidth taken from
    that noise would turn it into signal, so constant columns are zeroed.
    """
    xc = x - x.mean(axis=0, keepdims=True)
    constant = np.ptp(x, axis=0) == 0
    if constant.any():
        xc[:, constant] = 0.0
    return xc


def gram_linear_np(x: np.ndarray) -> np.ndarray:
    """Linear kernel ``K = X X^T`` (n x n)."""
    return x @ x.T


def median_sq_distance(sq: np.ndarray) -> float:
    """CKA's RBF scale m: the median of *all* n^2 entries of D, the zero diagonal included.

    This is what Kornblith et al.'s reference ``gram_rbf`` computes
    (``np.median(sq_distances)``), a median of *squared* distances, and is not
    MMD's median heuristic (:func:`probes._mmd.median_bandwidth`: distances
    over the distinct pairs). When more than half of the entries are 0
    (duplicated rows) the median of the non-zero entries is used; when every
    entry is 0 (all rows coincide) 1.0, which makes the kernel the constant 1.
    """
    m = float(np.median(sq))
    if m > 0.0:
        return m
    nonzero = sq[sq > 0.0]
    return float(np.median(nonzero)) if nonzero.size else 1.0


def gram_rbf_np(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """RBF kernel ``K_ij = exp(-D_ij / (2 t^2 m))`` of Kornblith et al. (2019).

    D_ij = ||x_i - x_j||^2, t = ``threshold`` and m = :func:`median_sq_distance`
    of D (all n^2 entries, zero diagonal included), exactly as in the paper's
    reference code. Identical rows are at distance exactly 0
    (:func:`probes._mmd.pooled_sq_distances`), so their kernel entries are
    exactly 1; when all rows coincide the kernel is the constant 1 (its centred
    form is 0, so any HSIC with it is 0).
    """
    sq = pooled_sq_distances(x)
    scale = 2.0 * threshold * threshold * median_sq_distance(sq)
    return np.exp(-sq / scale)


def hsic_gram(gram_x: np.ndarray, gram_y: np.ndarray, debiased: bool) -> float:
    """HSIC from two n x n Gram matrices (biased needs n >= 2, debiased n >= 4)."""
    n = gram_x.shape[0]
    if not debiased:
        # tr(K H L H) = <HKH, L^T>_F: centring one side is enough.
        kc = gram_x - gram_x.mean(axis=0, keepdims=True)
        kc = kc - kc.mean(axis=1, keepdims=True)
        return float(np.sum(kc * gram_y.T)) / (n - 1) ** 2
    kt = gram_x.copy()
    lt = gram_y.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    trace = float(np.sum(kt * lt.T))  # tr(K~ L~)
    sum_k = float(kt.sum())
    sum_l = float(lt.sum())
    cross = float(kt.sum(axis=0) @ lt.sum(axis=1))  # 1^T K~ L~ 1
    return _song(trace, sum_k, sum_l, cross, n)


def _song(trace: float, sum_k: float, sum_l: float, cross: float, n: int) -> float:
    """Song et al. (2012): [tr(K~L~) + 1K~1 1L~1/((n-1)(n-2)) - 2 1K~L~1/(n-2)] / (n(n-3))."""
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def hsic_linear_features(
    x: np.ndarray, y: np.ndarray, debiased: bool
) -> tuple[float, float, float]:
    """HSIC(K,L), HSIC(K,K), HSIC(L,L) for K = XX^T, L = YY^T without n x n matrices.

    With K~ = K - diag(K), d_x = diag(K) = row squared norms, s_x = X^T 1:
    ``<K, L>_F = ||X^T Y||_F^2``, ``tr(K~L~) = ||X^T Y||_F^2 - d_x.d_y``,
    ``1^T K~ 1 = ||s_x||^2 - sum(d_x)`` and ``K~ 1 = X s_x - d_x``. The biased
    form needs centred X, Y (then ``tr(KHLH) = ||Y^T X||_F^2``); the debiased
    terms hold for any X, Y.
    """
    n = x.shape[0]
    xtx = x.T @ x
    yty = y.T @ y
    xty = x.T @ y
    f_xy = float(np.sum(xty * xty))
    f_xx = float(np.sum(xtx * xtx))
    f_yy = float(np.sum(yty * yty))
    if not debiased:
        norm = (n - 1) ** 2
        return f_xy / norm, f_xx / norm, f_yy / norm
    d_x = np.einsum("ij,ij->i", x, x)
    d_y = np.einsum("ij,ij->i", y, y)
    s_x = x.sum(axis=0)
    s_y = y.sum(axis=0)
    row_x = x @ s_x - d_x  # K~ 1
    row_y = y @ s_y - d_y  # L~ 1
    sum_x = float(s_x @ s_x - d_x.sum())
    sum_y = float(s_y @ s_y - d_y.sum())
    xy = _song(f_xy - float(d_x @ d_y), sum_x, sum_y, float(row_x @ row_y), n)
    xx = _song(f_xx - float(d_x @ d_x), sum_x, sum_x, float(row_x @ row_x), n)
    yy = _song(f_yy - float(d_y @ d_y), sum_y, sum_y, float(row_y @ row_y), n)
    return xy, xx, yy


def ratio(xy: float, xx: float, yy: float) -> float:
    """CKA = HSIC(K,L) / sqrt(HSIC(K,K) HSIC(L,L)), defined as 0.0 when the denominator is <= 0.

    A zero self-HSIC means a constant representation (no variation to align
    with); a negative one can only come from the debiased estimator at very
    small n. Either way there is no evidence of shared structure: 0.0, not NaN.
    """
    if not (xx > 0.0 and yy > 0.0):
        return 0.0
    return float(xy / np.sqrt(xx * yy))
