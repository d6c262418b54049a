"""Domain gap between two unpaired feature sets (source vs target).

Rows are examples, columns are features of the same layer; the two sets may
have different sizes. Four complementary views of "how far apart are they":

- :func:`proxy_a_distance`: how well a linear classifier tells the domains
  apart (Ben-David et al. 2007/2010), with its ROC AUC.
- :func:`mmd2`: kernel two-sample statistic with a permutation p-value
  (Gretton et al., JMLR 2012).
- :func:`frechet_distance`: distance between Gaussians fitted to each set
  (the FID formula, on any features).
- :func:`coral`: distance between the two covariance matrices
  (Sun & Saenko 2016).

:func:`domain_gap` runs them all on (sub)samples of both sets.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> gap = domain_gap(rng.normal(size=(200, 4)), rng.normal(3.0, 1.0, size=(200, 4)))
>>> gap.pad > 1.8 and gap.auc > 0.99
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any

import numpy as np
import torch

from probes._design import prepare
from probes._gaussian import centre, coral_from_covariances, frechet_from_moments
from probes._logistic import solve_binary_weighted
from probes._mmd import rbf_mmd2_test
from probes._validation import as_features, check_int

__all__ = [
    "DomainGap",
    "MMDResult",
    "ProxyADistance",
    "coral",
    "domain_gap",
    "frechet_distance",
    "mmd2",
    "proxy_a_distance",
]

# The domain classifier's convergence: the largest gradient entry of the mean
# objective, scikit-learn's lbfgs default.
_PAD_TOL = 1e-4


@dataclass(frozen=True)
class ProxyADistance:
    """Result of :func:`proxy_a_distance`.

    Attributes
    ----------
    pad:
        Proxy A-distance 2(1 - 2ε) clipped to [0, 2]: 0 means the domains are
        indistinguishable to a linear classifier, 2 perfectly separable.
    error:
        ε, the held-out balanced error (mean of the per-domain error rates)
        of the domain classifier, in [0, 1]; 0.5 is chance.
    auc:
        Held-out ROC AUC of the domain classifier, in [0, 1]; 0.5 is chance
        (2·AUC - 1 is another common drift score).
    folds:
        Number of cross-validation folds actually used.
    """

    pad: float
    error: float
    auc: float
    folds: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MMDResult:
    """Result of :func:`mmd2`.

    ``mmd2`` is the unbiased estimate (can be slightly negative when the
    distributions match), ``p_value`` the permutation p-value (None when
    ``n_permutations`` is 0), ``bandwidth`` the RBF σ used, in feature units.
    """

    mmd2: float
    p_value: float | None
    bandwidth: float
    n_permutations: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DomainGap:
    """All domain-gap measurements of :func:`domain_gap` for one pair of sets.

    ``pad``/``pad_error``/``auc`` come from :func:`proxy_a_distance`,
    ``mmd2``/``mmd_pvalue``/``mmd_bandwidth`` from :func:`mmd2`, ``frechet``
    from :func:`frechet_distance` (squared feature units), ``coral`` from
    :func:`coral`. ``n_source``/``n_target`` are the numbers of rows actually
    used (after subsampling), ``dim`` the number of features.
    """

    pad: float
    pad_error: float
    auc: float
    mmd2: float
    mmd_pvalue: float | None
    mmd_bandwidth: float
    frechet: float
    coral: float
    n_source: int
    n_target: int
    dim: int

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def _as_pair(
    source: Any, target: Any, names: tuple[str, str] = ("source", "target")
) -> tuple[np.ndarray, np.ndarray]:
    """Validate two 2-D float64 feature sets with >= 2 rows and the same columns."""
    s = as_features(source, names[0], min_rows=2)
    t = as_features(target, names[1], min_rows=2)
    if s.shape[1] != t.shape[1]:
        raise ValueError(
            f"'{names[0]}' and '{names[1]}' must have the same number of features (columns). "
            f"Got shapes {tuple(s.shape)} and {tuple(t.shape)}."
        )
    return s, t


def proxy_a_distance(
    source: Any, target: Any, *, seed: int = 0, folds: int = 5, C: float = 1.0
) -> ProxyADistance:
    """Proxy A-distance: how separable the two sets are by a linear domain classifier.

    A logistic regression (features standardised on the pooled set, L2
    penalty with inverse strength ``C``, classes weighted to balance the set
    sizes) is trained to tell source from target. Stratified k-fold
    cross-validation (scikit-learn's ``StratifiedKFold``, shuffled with
    ``seed``) holds every example out exactly once; ε is the balanced held-out
    error (mean of the source and target error rates, so unequal set sizes do
    not bias it) and PAD = 2(1 - 2ε), clipped to [0, 2]. The AUC is computed
    from the out-of-fold decision scores.

    The classifier is scikit-learn's ``LogisticRegression(C=C,
    class_weight="balanced")`` objective (C times the class-weighted
    log-loss sum plus half the squared weight norm), solved for all folds at
    once by the linear probes' batched L-BFGS, in its one-logit binary form
    (:mod:`probes._logistic`), to the same tolerance (largest gradient entry of
    the mean objective 1e-4). Two
    differences from a scikit-learn pipeline: the standardisation uses the
    pooled set's statistics, which hold no domain labels, rather than each
    training fold's; and the penalty uses the mean training-fold size (folds
    differ by at most a row per class). ``tests/probes/test_gap.py`` checks the
    error and AUC against the pipeline.

    ``folds`` is reduced to the size of the smaller set when that set has
    fewer rows than ``folds`` (each fold needs an example of each domain).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> r = proxy_a_distance(rng.normal(size=(100, 3)), rng.normal(size=(100, 3)))
    >>> r.pad < 0.5
    True
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    s, t = _as_pair(source, target)
    folds = check_int(folds, "folds", "proxy_a_distance", 2)
    if not (isinstance(C, Real) and math.isfinite(C) and C > 0):
        raise ValueError(
            f"The 'C' parameter of proxy_a_distance must be a positive number. Got {C!r} instead."
        )
    folds = min(folds, s.shape[0], t.shape[0])

    x = np.concatenate([s, t], axis=0)
    y = np.concatenate([np.zeros(s.shape[0], dtype=np.int64), np.ones(t.shape[0], dtype=np.int64)])
    fold = np.empty(len(y), dtype=np.int64)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for j, (_, held) in enumerate(cv.split(x, y)):
        fold[held] = j
    # Balanced class weights inside each training fold, normalised to sum to 1:
    # the mean form of C * sum_i w_i CE_i + ||w||^2 / 2 divides by C * n_train.
    train = fold[None, :] != np.arange(folds)[:, None]  # (folds, n)
    weights = np.zeros(train.shape)
    for c in (0, 1):
        in_c = train & (y == c)[None, :]
        weights += in_c / (2.0 * in_c.sum(axis=1, keepdims=True))
    n_train = float(train.sum(axis=1).mean())
    # Two softmax columns split the binary weight (W1 = -W0): binary C is 2 / (l2 n).
    lam = 2.0 / (float(C) * n_train)
    device = torch.device("cpu")
    design = prepare(x, device, torch.float32, stream=False)
    v = solve_binary_weighted(design, y, weights, lam, max_iter=1000, tol=_PAD_TOL)
    # (folds, n): log-odds of "target"
    margin = torch.cat([lg[:, 0] for _, _, lg in design.block_logits(v)], dim=1)
    margin = margin.double().numpy()
    scores = margin[fold, np.arange(len(y))]

    predicted = scores > 0.0
    err_source = float(np.mean(predicted[y == 0]))
    err_target = float(np.mean(~predicted[y == 1]))
    error = 0.5 * (err_source + err_target)
    pad = float(np.clip(2.0 * (1.0 - 2.0 * error), 0.0, 2.0))
    auc = float(roc_auc_score(y, scores))
    return ProxyADistance(pad=pad, error=error, auc=auc, folds=folds)


def mmd2(
    source: Any,
    target: Any,
    *,
    bandwidth: float | None = None,
    n_permutations: int = 200,
    seed: int = 0,
) -> MMDResult:
    """Unbiased MMD² (Gretton et al., JMLR 2012) with an RBF kernel and a permutation p-value.

    k(a, b) = exp(-‖a - b‖² / (2σ²)); σ is the median pairwise distance of
    the pooled sample unless ``bandwidth`` is given. MMD² ≥ 0 in the
    population (0 iff the distributions match, the RBF kernel being
    characteristic); the unbiased estimate fluctuates around 0 under the
    null and can be slightly negative. The p-value permutes the pooled
    sample: p = (1 + #{permuted statistic ≥ observed}) / (1 + n_permutations),
    so its smallest value is 1 / (1 + n_permutations).

    Memory and time are O((n + m)²): subsample large sets first
    (:func:`domain_gap` does).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> r = mmd2(rng.normal(size=(100, 3)), rng.normal(2.0, 1.0, size=(100, 3)))
    >>> r.p_value == 1 / 201
    True
    """
    s, t = _as_pair(source, target)
    n_permutations = check_int(n_permutations, "n_permutations", "mmd2", 0)
    if bandwidth is not None and not (
        isinstance(bandwidth, Real) and math.isfinite(bandwidth) and bandwidth > 0
    ):
        raise ValueError(
            "The 'bandwidth' parameter of mmd2 must be a positive number or None. "
            f"Got {bandwidth!r} instead."
        )
    value, p_value, sigma = rbf_mmd2_test(s, t, bandwidth, n_permutations, seed)
    return MMDResult(mmd2=value, p_value=p_value, bandwidth=sigma, n_permutations=n_permutations)


def frechet_distance(source: Any, target: Any) -> float:
    """Fréchet distance between Gaussians fitted to the two sets (the FID formula).

    ‖μs - μt‖² + tr(Σs + Σt - 2(Σs Σt)^{1/2}), with unbiased covariances, in
    squared feature units; 0 for identical sets, symmetric, never negative.
    Robust to singular covariances: with more features than rows the trace
    term is the nuclear norm of the n_s x n_t cross-product of the centred
    sets (same value, cheaper); otherwise it comes from the eigenvalues of
    the symmetric PSD Σs^{1/2} Σt Σs^{1/2}.

    Example
    -------
    >>> a = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    >>> round(frechet_distance(a, a + 1.0), 6)
    2.0
    """
    s, t = _as_pair(source, target)
    mu_s, a_s = centre(s)
    mu_t, a_t = centre(t)
    return frechet_from_moments(mu_s, a_s, mu_t, a_t)


def coral(source: Any, target: Any) -> float:
    """CORAL distance ‖Cs - Ct‖²_F / (4d²) between the two feature covariances.

    The Deep CORAL loss (Sun & Saenko 2016) with unbiased covariances; it
    ignores the means, so it measures a change of spread and correlation,
    in squared-squared feature units (features are not standardised).
    0 when the covariances match.

    Example
    -------
    >>> a = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    >>> coral(a, a + 5.0) < 1e-20
    True
    """
    s, t = _as_pair(source, target)
    a_s, a_t = centre(s)[1], centre(t)[1]
    return coral_from_covariances(a_s.T @ a_s, a_t.T @ a_t)


def _subsample(x: Any, max_samples: int, rng: np.random.Generator) -> Any:
    """At most ``max_samples`` rows of ``x``, drawn before any conversion: a large
    (possibly memory-mapped) set is read, checked and copied only where sampled."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] <= max_samples:
        return x
    keep = np.sort(rng.choice(shape[0], size=max_samples, replace=False))
    return x[keep]


def domain_gap(
    source_features: Any,
    target_features: Any,
    *,
    max_samples: int = 2000,
    n_permutations: int = 200,
    seed: int = 0,
) -> DomainGap:
    """Every domain-gap measurement for one pair of feature sets.

    Each set is subsampled (without replacement, with ``seed``) to at most
    ``max_samples`` rows before it is converted or checked (a memory-mapped
    set is read only where sampled); then :func:`proxy_a_distance`, :func:`mmd2`,
    :func:`frechet_distance` and :func:`coral` are computed on the same rows.
    Deterministic given ``seed``.

    Example
    -------
    >>> rng = np.random.default_rng(1)
    >>> g = domain_gap(rng.normal(size=(150, 5)), rng.normal(size=(120, 5)), n_permutations=50)
    >>> (g.n_source, g.n_target, g.dim), g.pad < 0.5, g.mmd_pvalue > 0.05
    ((150, 120, 5), True, True)
    """
    max_samples = check_int(max_samples, "max_samples", "domain_gap", 2)
    n_permutations = check_int(n_permutations, "n_permutations", "domain_gap", 0)
    rng = np.random.default_rng(seed)
    s, t = _as_pair(
        _subsample(source_features, max_samples, rng),
        _subsample(target_features, max_samples, rng),
        ("source_features", "target_features"),
    )

    pad = proxy_a_distance(s, t, seed=seed)
    mmd = mmd2(s, t, n_permutations=n_permutations, seed=seed)
    mu_s, a_s = centre(s)
    mu_t, a_t = centre(t)
    cov_s, cov_t = a_s.T @ a_s, a_t.T @ a_t
    return DomainGap(
        pad=pad.pad,
        pad_error=pad.error,
        auc=pad.auc,
        mmd2=mmd.mmd2,
        mmd_pvalue=mmd.p_value,
        mmd_bandwidth=mmd.bandwidth,
        frechet=frechet_from_moments(mu_s, a_s, mu_t, a_t, cov_s, cov_t),
        coral=coral_from_covariances(cov_s, cov_t),
        n_source=int(s.shape[0]),
        n_target=int(t.shape[0]),
        dim=int(s.shape[1]),
    )
