"""Transferability scores: how well a pretrained model suits a target task, before training.

All four use target data only (features or source-head outputs on target
examples, and target labels). Higher is better for every score; they rank
models or layers for one target task and are not comparable across tasks.

- :func:`logme`: log marginal evidence of a Bayesian linear model on the
  features (You et al., ICML 2021; fixed-point algorithm of JMLR 2022).
- :func:`leep`: log expected empirical prediction of the source head
  (Nguyen et al., ICML 2020).
- :func:`nce`: negative conditional entropy of target labels given the source
  head's hard predictions (Tran et al., ICCV 2019).
- :func:`h_score`: tr(cov(f)⁺ cov(E[f|y])) (Bao et al., ICIP 2019).

Every function takes numpy arrays or torch tensors and requires at least two
distinct target classes (a single-class target makes every score trivially
maximal).

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = np.repeat([0, 1, 2], 40)
>>> good = rng.normal(size=(120, 6)) + 3.0 * np.eye(3, 6)[y]
>>> bad = rng.normal(size=(120, 6))
>>> logme(good, y) > logme(bad, y) and h_score(good, y) > h_score(bad, y)
True
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np

from probes._validation import as_features, as_labels, as_probabilities, check_int

__all__ = ["h_score", "leep", "logme", "nce"]

# Floor for the denominators of the evidence updates: only active in the
# degenerate case of labels orthogonal to (or exactly inside) the feature span.
_TINY = 1e-300
_RES_FLOOR = 1e-5


def _class_index(labels: np.ndarray, name: str = "labels") -> tuple[np.ndarray, int]:
    """Map labels to 0..K-1 (sorted class ids) and require K >= 2."""
    classes, index = np.unique(labels, return_inverse=True)
    if classes.size < 2:
        shown = f" (class {int(classes[0])})" if classes.size else ""
        raise ValueError(
            f"The '{name}' parameter needs at least 2 distinct classes for a "
            f"transferability score. Got {classes.size}{shown}."
        )
    return index, int(classes.size)


def _features_and_labels(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, int]:
    f = as_features(features, "features", min_rows=2)
    y = as_labels(labels, "labels", n=f.shape[0])
    index, k = _class_index(y)
    return f, index, k


def _spectrum(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero eigenvalues σ of FᵀF and the matching left singular vectors U (n, r).

    Decomposes the smaller Gram matrix (FᵀF when n >= d, FFᵀ otherwise) once.
    """
    n, d = f.shape
    if n >= d:
        w, v = np.linalg.eigh(f.T @ f)
    else:
        w, v = np.linalg.eigh(f @ f.T)
    top = float(w.max()) if w.size else 0.0
    keep = w > top * max(n, d) * np.finfo(np.float64).eps
    if not keep.any():
        raise ValueError("The 'features' parameter is all zeros; LogME needs non-zero features.")
    sigma = w[keep]
    u = (f @ v[:, keep]) / np.sqrt(sigma) if n >= d else v[:, keep]
    return sigma, u


def _evidence_terms(
    t: float, sigma: np.ndarray, x2: np.ndarray, res_x2: float
) -> tuple[float, float, float]:
    """γ, ‖m‖² and ‖y - Fm‖² at the precision ratio t = α/β, in the eigenbasis of FᵀF."""
    shrink = sigma / (sigma + t)
    gamma = float(shrink.sum())
    m2 = float(np.sum(sigma * x2 / (sigma + t) ** 2))
    res2 = float(np.sum(x2 * (t / (sigma + t)) ** 2) + res_x2)
    return gamma, m2, res2


def _logme_one(y: np.ndarray, sigma: np.ndarray, u: np.ndarray, tol: float, max_iter: int) -> float:
    n = y.shape[0]
    x = u.T @ y
    x2 = x * x
    # Part of y outside the column span of F: the zero singular values' share.
    res_x2 = max(float(y @ y) - float(x2.sum()), 0.0)
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        t = max(alpha / beta, _TINY)
        gamma, m2, res2 = _evidence_terms(t, sigma, x2, res_x2)
        alpha = gamma / max(m2, _TINY)
        # y is a 0/1 indicator, so the residual has a fixed scale; the floor (the
        # authors' 1e-5) keeps β finite when F interpolates y (n <= d).
        beta = (n - gamma) / max(res2, _RES_FLOOR)
        if abs(alpha / beta - t) / t <= tol:
            break
    t = max(alpha / beta, _TINY)
    _, m2, res2 = _evidence_terms(t, sigma, x2, res_x2)
    # d/2·log α - ½Σ_{i=1..d} log(α + βσ_i) = -½Σ log(1 + σ_i/t): the d - r zero
    # eigenvalues contribute exactly 0, so summing over the r non-zero ones is
    # the paper's sum over all d eigenvalues.
    evidence = (
        0.5 * n * math.log(beta)
        - 0.5 * float(np.sum(np.log1p(sigma / t)))
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * n * math.log(2.0 * math.pi)
    )
    return evidence / n


def logme(features: Any, labels: Any, *, tol: float = 1e-3, max_iter: int = 100) -> float:
    """LogME: mean per-example log evidence of a Bayesian linear model on the features.

    For each target class k, y is the one-vs-rest 0/1 indicator and the model
    y = Fw + N(0, 1/β), w ~ N(0, I/α) has its evidence maximised over α, β by
    the fixed-point iteration of You et al. (JMLR 2022): with σ_i the
    eigenvalues of FᵀF, γ = Σ βσ_i/(α + βσ_i), m = β(αI + βFᵀF)⁻¹Fᵀy,
    α = γ/‖m‖², β = (n - γ)/‖y - Fm‖², until α/β changes by at most ``tol``
    (relative) or ``max_iter`` steps. The per-example evidence

        L_k = [d/2 log α + n/2 log β - ½Σ_{i=1..d} log(α + βσ_i)
               - β/2 ‖y - Fm‖² - α/2 ‖m‖² - n/2 log 2π] / n

    is evaluated at the final α, β and averaged over the classes present in
    ``labels``. The sum over σ_i runs over all d eigenvalues, zeros included
    (n < d or rank-deficient F), as in the paper; the authors' fixed-point
    code sums over the non-zero ones only, which differs by
    (d - rank)/(2n)·log α per class.

    Conventions: features are used as given (not centred or standardised;
    no bias term), labels are one-vs-rest indicators; float64 throughout.
    Units: nats per example; typically in [-1, 2] for 0/1 targets, higher
    is better.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50)
    >>> logme(rng.normal(size=(100, 4)) + 4.0 * y[:, None], y) > logme(rng.normal(size=(100, 4)), y)
    True
    """
    f, index, k = _features_and_labels(features, labels)
    if not (isinstance(tol, Real) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"The 'tol' parameter of logme must be a positive number. Got {tol!r}.")
    max_iter = check_int(max_iter, "max_iter", "logme")
    sigma, u = _spectrum(f)
    evidences = [
        _logme_one((index == c).astype(np.float64), sigma, u, float(tol), int(max_iter))
        for c in range(k)
    ]
    return float(np.mean(evidences))


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP: log expected empirical prediction of the source head on the target task.

    θ_i = ``source_probs[i]`` is the source model's softmax over its z
    classes on target example i. With the empirical joint
    P(y, z) = (1/n)Σ_{i: y_i = y} θ_iz and conditional P(y|z) = P(y, z)/P(z)
    (0 for a source class with no mass), LEEP = (1/n)Σ_i log Σ_z P(y_i|z)θ_iz:
    the average log-likelihood of the target labels under the "source head
    followed by the empirical z → y map" classifier. In nats, always <= 0;
    closer to 0 is better. Rows are renormalised to sum to 1 exactly.

    Example
    -------
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    >>> round(leep(probs, [0, 0, 1, 1]), 4)
    -0.3426
    """
    theta = as_probabilities(source_probs, "source_probs")
    y = as_labels(labels, "labels", n=theta.shape[0])
    index, k = _class_index(y)
    theta = theta / theta.sum(axis=1, keepdims=True)
    n = theta.shape[0]
    onehot = np.zeros((n, k))
    onehot[np.arange(n), index] = 1.0
    joint = onehot.T @ theta / n
    marginal = joint.sum(axis=0)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    # θ_iz > 0 implies P(y_i, z) > 0, so the likelihood of each example is > 0.
    likelihood = np.einsum("iz,iz->i", theta, cond[index])
    return float(np.mean(np.log(likelihood)))


def _hard_predictions(source_predictions: Any, n_name: str) -> np.ndarray:
    shape = tuple(getattr(source_predictions, "shape", np.shape(source_predictions)))
    if len(shape) == 2 and shape[1] > 1:
        # Probabilities or logits: the hard prediction is the argmax either way.
        return as_features(source_predictions, n_name).argmax(axis=1)
    return as_labels(source_predictions, n_name)


def nce(source_predictions: Any, labels: Any) -> float:
    """NCE: negative conditional entropy -H(Y|Z) of target labels given source predictions.

    z is the source model's hard prediction on each target example: an (n,)
    array of source class ids, or an (n, z) matrix of probabilities or
    logits whose argmax is taken. NCE = Σ_{y,z} P(y, z) log P(y|z) with the
    empirical joint distribution. In nats, always <= 0; 0 exactly when the
    target label is a function of the source prediction.

    Example
    -------
    >>> nce([0, 0, 1, 1], [1, 1, 0, 0])
    0.0
    >>> round(nce([0, 0, 0, 0], [0, 0, 1, 1]), 4)  # -log 2
    -0.6931
    """
    z = _hard_predictions(source_predictions, "source_predictions")
    y = as_labels(labels, "labels", n=z.shape[0])
    index, _ = _class_index(y)
    _, z_index = np.unique(z, return_inverse=True)
    # Counts rather than frequencies: c_yz / c_z is exactly 1 when y is a
    # function of z, so those terms are exactly 0.
    n_y, n_z = int(index.max()) + 1, int(z_index.max()) + 1
    counts = np.bincount(index * n_z + z_index, minlength=n_y * n_z).reshape(n_y, n_z)
    counts = counts.astype(np.float64)
    per_z = counts.sum(axis=0)
    yy, zz = np.nonzero(counts)
    c = counts[yy, zz]
    return float(np.sum(c * np.log(c / per_z[zz])) / z.shape[0])


def h_score(features: Any, labels: Any, *, rcond: float = 1e-10) -> float:
    """H-score: tr(cov(f)⁺ cov(E[f|y])), how much of the feature variance separates classes.

    cov(f) is the total feature covariance, cov(E[f|y]) the covariance of the
    class-conditional means (each example replaced by its class mean), both
    with the same 1/n normalisation (the score is invariant to a common
    factor, so 1/(n - 1) would give the same value). The pseudo-inverse
    (through the eigendecomposition of the smaller of the d x d covariance
    and the n x n Gram matrix) drops eigenvalues below ``rcond`` times the
    largest; constant features give 0. Dimensionless, in
    [0, min(rank, K - 1)] for K classes; higher is better. Invariant to any
    invertible linear transform of full-rank features. With n <= d the
    covariance is singular and the score saturates near K - 1 whatever the
    features (use it with n well above d).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50)
    >>> round(h_score(rng.normal(size=(100, 3)) + 10.0 * y[:, None], y), 2)
    0.99
    """
    f, index, k = _features_and_labels(features, labels)
    if not (isinstance(rcond, Real) and math.isfinite(rcond) and rcond >= 0):
        raise ValueError(
            f"The 'rcond' parameter of h_score must be a non-negative number. Got {rcond!r}."
        )
    n, d = f.shape
    mu = f.mean(axis=0)
    fc = f - mu
    counts = np.bincount(index, minlength=k).astype(np.float64)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), index] = 1.0
    # cov(E[f|y]) = Mᵀ M with the rows of M the centred class means scaled by
    # sqrt(n_c / n), so tr(cov⁺ MᵀM) = Σ_i ‖M v_i‖² / λ_i over the kept
    # eigenpairs (λ_i, v_i) of cov(f): the pseudo-inverse as np.linalg.pinv
    # (hermitian=True) builds it, without the d x d x d product.
    scaled_means = ((onehot.T @ f) / counts[:, None] - mu) * np.sqrt(counts / n)[:, None]
    if n >= d:
        lam, vecs = np.linalg.eigh(fc.T @ fc / n)
    else:
        # Same non-zero spectrum from the smaller n x n Gram matrix;
        # v_i = Fcᵀ u_i / sqrt(n λ_i).
        lam, u = np.linalg.eigh(fc @ fc.T / n)
    keep = lam > rcond * float(np.abs(lam).max(initial=0.0))
    if not keep.any():
        return 0.0
    if n >= d:
        proj = scaled_means @ vecs[:, keep]
    else:
        proj = (scaled_means @ fc.T) @ u[:, keep] / np.sqrt(n * lam[keep])
    return float(np.sum(proj**2 / lam[keep]))
