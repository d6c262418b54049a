"""Gaussians fitted to feature sets: the Fréchet distance and CORAL from means and covariances.

Shared by :func:`probes.gap.frechet_distance`, :func:`probes.gap.coral` and
:func:`probes.gap.domain_gap` (which computes each covariance once for both).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "centre",
    "clip_spectrum",
    "coral_from_covariances",
    "frechet_from_moments",
    "psd_sqrt",
    "trace_sqrt_product",
]


def centre(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the centred rows scaled by 1/sqrt(n - 1), so that Σ = aᵀa (unbiased)."""
    mu = x.mean(axis=0)
    return mu, (x - mu) / np.sqrt(x.shape[0] - 1)


def clip_spectrum(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues of a PSD matrix that are rounding noise.

    A square root turns rounding noise ε ~ 1e-16·λmax on a zero eigenvalue
    into √ε ~ 1e-8·√λmax, and there are D - N such eigenvalues when D > N;
    below the numerical-rank threshold they are set to exactly 0.
    """
    top = float(w.max(initial=0.0))
    return np.where(w > top * w.size * np.finfo(np.float64).eps, w, 0.0)


def psd_sqrt(c: np.ndarray) -> np.ndarray:
    """The symmetric square root of a PSD matrix, rounding-noise eigenvalues set to 0."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(clip_spectrum(w))) @ v.T


def trace_sqrt_product(
    a_s: np.ndarray, a_t: np.ndarray, cov_s: np.ndarray | None, cov_t: np.ndarray | None
) -> float:
    """tr (Σs Σt)^{1/2} for Σs = a_sᵀa_s, Σt = a_tᵀa_t, by the cheaper of two exact routes."""
    d = a_s.shape[1]
    if d > min(a_s.shape[0], a_t.shape[0]):
        # More features than rows: Σs Σt has the same non-zero eigenvalues as
        # K Kᵀ with K = a_s a_tᵀ (n_s x n_t), so the trace is the sum of the
        # singular values of K: no D x D decomposition, no square root of
        # rounding noise.
        return float(np.linalg.svd(a_s @ a_t.T, compute_uv=False).sum())
    cov_s = a_s.T @ a_s if cov_s is None else cov_s
    cov_t = a_t.T @ a_t if cov_t is None else cov_t
    # Σs^{1/2} Σt Σs^{1/2} is symmetric PSD with the eigenvalues of Σs Σt,
    # so eigh is stable where sqrtm of the non-symmetric product is not.
    root = psd_sqrt(cov_s)
    middle = root @ cov_t @ root
    eig = clip_spectrum(np.linalg.eigvalsh(0.5 * (middle + middle.T)))
    return float(np.sqrt(eig).sum())


def frechet_from_moments(
    mu_s: np.ndarray,
    a_s: np.ndarray,
    mu_t: np.ndarray,
    a_t: np.ndarray,
    cov_s: np.ndarray | None = None,
    cov_t: np.ndarray | None = None,
) -> float:
    """‖μs − μt‖² + tr Σs + tr Σt − 2 tr (Σs Σt)^{1/2}, from means and scaled centred rows."""
    diff = mu_s - mu_t
    traces = float(np.sum(a_s * a_s) + np.sum(a_t * a_t))  # tr Σs + tr Σt
    value = float(diff @ diff) + traces - 2.0 * trace_sqrt_product(a_s, a_t, cov_s, cov_t)
    return max(value, 0.0)


def coral_from_covariances(cov_s: np.ndarray, cov_t: np.ndarray) -> float:
    """CORAL: ‖Σs − Σt‖²_F / (4 d²) (Sun & Saenko 2016)."""
    d = cov_s.shape[0]
    return float(np.sum((cov_s - cov_t) ** 2) / (4.0 * d * d))
