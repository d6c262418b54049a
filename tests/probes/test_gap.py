"""Tests of probes.gap: proxy A-distance, MMD², Fréchet distance, CORAL, domain_gap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import pdist

from probes._mmd import mmd2_unbiased, pooled_sq_distances
from probes.gap import (
    DomainGap,
    coral,
    domain_gap,
    frechet_distance,
    mmd2,
    proxy_a_distance,
)


def _gauss(seed: int, n: int = 300, d: int = 8, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def _rbf(a: np.ndarray, b: np.ndarray, sigma: float) -> float:
    return float(np.exp(-np.sum((a - b) ** 2) / (2.0 * sigma**2)))


def _mmd2_loops(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Unbiased MMD² written out term by term (Gretton et al. 2012, eq. 3)."""
    n, m = len(x), len(y)
    kxx = sum(_rbf(x[i], x[j], sigma) for i in range(n) for j in range(n) if i != j)
    kyy = sum(_rbf(y[i], y[j], sigma) for i in range(m) for j in range(m) if i != j)
    kxy = sum(_rbf(x[i], y[j], sigma) for i in range(n) for j in range(m))
    return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy / (n * m)


# ----------------------------------------------------------------- same / shifted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_distribution_is_not_a_gap(seed):
    gap = domain_gap(_gauss(2 * seed), _gauss(2 * seed + 1), seed=seed)
    assert gap.pad < 0.3
    assert 0.35 < gap.auc < 0.65
    assert gap.mmd_pvalue > 0.05
    assert abs(gap.mmd2) < 0.01


def test_shifted_distribution_is_a_large_gap():
    gap = domain_gap(_gauss(0), _gauss(1, shift=3.0), n_permutations=200)
    assert gap.pad > 1.8
    assert gap.auc > 0.99
    assert gap.mmd_pvalue == pytest.approx(1.0 / 201.0, abs=1e-15)
    assert gap.mmd2 > 0.1
    # Means differ by 3 in each of 8 coordinates: ‖Δμ‖² = 72 dominates.
    assert gap.frechet == pytest.approx(72.0, rel=0.1)


def test_pad_error_is_balanced_for_unequal_sizes():
    # A classifier that always says "source" would have a plain error of
    # 40/340; the balanced error stays near chance for one distribution.
    result = proxy_a_distance(_gauss(0, n=300), _gauss(1, n=40))
    assert 0.35 < result.error <= 0.65
    assert result.pad < 0.6
    assert result.pad == pytest.approx(max(0.0, 2.0 * (1.0 - 2.0 * result.error)))


def _sklearn_pad(s: np.ndarray, t: np.ndarray, seed: int, C: float) -> tuple[float, np.ndarray]:
    """The scikit-learn pipeline PAD's classifier stands for: per-fold StandardScaler,
    LogisticRegression(C, class_weight="balanced"), out-of-fold decision scores."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([s, t])
    y = np.r_[np.zeros(len(s), dtype=int), np.ones(len(t), dtype=int)]
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, class_weight="balanced", tol=1e-8, max_iter=10_000),
    )
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_predict(clf, x, y, cv=cv, method="decision_function")
    predicted = scores > 0
    return 0.5 * (np.mean(predicted[y == 0]) + np.mean(~predicted[y == 1])), scores


@pytest.mark.parametrize(
    ("n_s", "n_t", "d", "shift", "C", "seed"),
    [(300, 200, 8, 0.3, 1.0, 0), (250, 250, 32, 0.1, 1.0, 1), (200, 120, 16, 0.5, 0.1, 2)],
)
def test_pad_classifier_matches_the_sklearn_pipeline(n_s, n_t, d, shift, C, seed):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n_s, d)) * rng.uniform(0.5, 2.0, size=d)
    t = rng.normal(size=(n_t, d)) * rng.uniform(0.5, 2.0, size=d) + shift
    ours = proxy_a_distance(s, t, seed=seed, C=C)
    err, scores = _sklearn_pad(s, t, seed, C)
    # Same folds and objective; the standardisation (pooled vs per fold) and the float32
    # solve move a decision score by far less than its spread, so at most a borderline
    # example or two per domain flips: the balanced error moves by <= 2 / (smaller set).
    assert abs(ours.error - err) <= 2.0 / min(n_s, n_t) + 1e-12
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(n_s), np.ones(n_t)]
    assert ours.auc == pytest.approx(roc_auc_score(y, scores), abs=0.01)


def test_pad_folds_shrink_to_smallest_set():
    result = proxy_a_distance(_gauss(0, n=50, d=3), _gauss(1, n=3, d=3, shift=5.0), folds=5)
    assert result.folds == 3
    assert result.pad > 1.5


# ----------------------------------------------------------------------- MMD²


def test_mmd2_matches_explicit_formula():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 3))
    y = rng.normal(0.5, 1.5, size=(9, 3))
    for sigma in (0.7, 2.5):
        got = mmd2(x, y, bandwidth=sigma, n_permutations=0)
        assert got.mmd2 == pytest.approx(_mmd2_loops(x, y, sigma), abs=1e-10)
        assert got.p_value is None
        assert got.bandwidth == sigma


def test_mmd2_median_heuristic_bandwidth():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(10, 4)), rng.normal(size=(13, 4))
    got = mmd2(x, y, n_permutations=0)
    sigma = float(np.median(pdist(np.concatenate([x, y]))))
    assert got.bandwidth == pytest.approx(sigma, rel=1e-12)
    assert got.mmd2 == pytest.approx(_mmd2_loops(x, y, sigma), abs=1e-10)


def test_permutation_statistics_match_explicit_formula():
    # The vectorised statistic of many splits at once (one indicator column
    # per permutation) equals the explicit estimator on each split.
    rng = np.random.default_rng(5)
    z = rng.normal(size=(12, 2))
    n, m, sigma = 5, 7, 1.3
    k0 = np.exp(-pooled_sq_distances(z) / (2.0 * sigma**2))
    np.fill_diagonal(k0, 0.0)
    perms = [rng.permutation(n + m) for _ in range(4)]
    ind = np.zeros((n + m, len(perms)))
    for col, p in enumerate(perms):
        ind[p[:n], col] = 1.0
    stats = mmd2_unbiased(k0, k0.sum(axis=1), ind, n, m)
    for col, p in enumerate(perms):
        assert stats[col] == pytest.approx(_mmd2_loops(z[p[:n]], z[p[n:]], sigma), abs=1e-10)


def test_mmd2_p_value_is_on_the_permutation_grid_and_seeded():
    x, y = _gauss(0, n=40, d=3), _gauss(1, n=50, d=3, shift=0.3)
    a = mmd2(x, y, n_permutations=99, seed=7)
    b = mmd2(x, y, n_permutations=99, seed=7)
    assert a == b
    k = a.p_value * 100 - 1
    assert k == pytest.approx(round(k), abs=1e-9) and 0 <= round(k) <= 99


# ------------------------------------------------------------- Fréchet, CORAL


def test_frechet_matches_scipy_sqrtm():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 5))
    y = rng.normal(1.0, 2.0, size=(80, 5))
    mu_x, mu_y = x.mean(0), y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cx @ cy).real
    expected = np.sum((mu_x - mu_y) ** 2) + np.trace(cx + cy - 2.0 * root)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_frechet_limits_and_symmetry():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 6))
    y = rng.normal(size=(30, 6)) * 2.0
    shift = np.arange(6.0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    # Equal covariances: only the means differ.
    assert frechet_distance(x, x + shift) == pytest.approx(shift @ shift, rel=1e-9)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-9)
    assert frechet_distance(x, y) > 0.0


def test_frechet_singular_covariances():
    # More features than rows: both covariances are singular.
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(10, 50)), rng.normal(size=(12, 50))
    shift = np.linspace(-1.0, 1.0, 50)
    assert frechet_distance(x, x + shift) == pytest.approx(shift @ shift, rel=1e-8)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    value = frechet_distance(x, y)
    assert np.isfinite(value) and value > 0.0


def test_frechet_more_features_than_rows_matches_eigen_formula():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(15, 40)) * np.linspace(0.5, 2.0, 40)
    y = rng.normal(0.3, 1.0, size=(20, 40))
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(cx)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    eig = np.clip(np.linalg.eigvalsh(root @ cy @ root), 0.0, None)
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(cx + cy) - 2.0 * np.sqrt(eig).sum()
    # The reference takes square roots of rounding noise on the zero
    # eigenvalues (about 1e-8 each), hence the looser tolerance.
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-5)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-10)


def test_coral_matches_formula_and_vanishes_for_equal_covariances():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(70, 4)) * 3.0
    d = 4
    expected = np.sum((np.cov(x, rowvar=False) - np.cov(y, rowvar=False)) ** 2) / (4 * d * d)
    assert coral(x, y) == pytest.approx(expected, rel=1e-12)
    assert coral(x, x) == 0.0
    assert coral(x, x + 10.0) == pytest.approx(0.0, abs=1e-20)


# ------------------------------------------------------------------ domain_gap


def test_domain_gap_fields_subsampling_and_json():
    gap = domain_gap(_gauss(0, n=300, d=5), _gauss(1, n=150, d=5), max_samples=100)
    assert isinstance(gap, DomainGap)
    assert (gap.n_source, gap.n_target, gap.dim) == (100, 100, 5)
    d = gap.to_dict()
    assert set(d) == {
        "pad",
        "pad_error",
        "auc",
        "mmd2",
        "mmd_pvalue",
        "mmd_bandwidth",
        "frechet",
        "coral",
        "n_source",
        "n_target",
        "dim",
    }
    assert json.loads(json.dumps(d)) == d


def test_domain_gap_is_deterministic_and_seed_dependent():
    x, y = _gauss(0, n=200, d=4), _gauss(1, n=200, d=4, shift=0.2)
    a = domain_gap(x, y, max_samples=150, n_permutations=50, seed=3)
    b = domain_gap(x, y, max_samples=150, n_permutations=50, seed=3)
    c = domain_gap(x, y, max_samples=150, n_permutations=50, seed=4)
    assert a == b
    assert a != c


def test_torch_input_equals_numpy_input():
    x, y = _gauss(0, n=60, d=4), _gauss(1, n=50, d=4, shift=0.5)
    from_numpy = domain_gap(x, y, n_permutations=30)
    from_torch = domain_gap(torch.from_numpy(x), torch.from_numpy(y), n_permutations=30)
    assert from_numpy == from_torch
    assert frechet_distance(torch.from_numpy(x).float(), y) == pytest.approx(
        frechet_distance(x.astype(np.float32), y), rel=1e-12
    )


# ---------------------------------------------------------------------- errors


def test_dimension_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"same number of features.*\(10, 3\) and \(12, 4\)"):
        domain_gap(np.zeros((10, 3)), np.ones((12, 4)))
    with pytest.raises(ValueError, match=r"'source' and 'target'.*\(5, 2\) and \(5, 3\)"):
        mmd2(np.zeros((5, 2)), np.ones((5, 3)))


def test_non_finite_values_name_the_argument():
    bad = np.ones((10, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"'target_features' parameter contains 1 NaN"):
        domain_gap(np.zeros((10, 3)), bad)
    with pytest.raises(ValueError, match=r"'source' parameter contains 1 NaN"):
        frechet_distance(bad, np.zeros((10, 3)))


def test_too_few_rows_and_bad_parameters():
    with pytest.raises(ValueError, match=r"'source_features' parameter needs at least 2 samples"):
        domain_gap(np.zeros((1, 3)), np.ones((10, 3)))
    with pytest.raises(ValueError, match=r"'target' parameter must be 2-D"):
        proxy_a_distance(np.zeros((4, 3)), np.ones((4, 3, 1)))
    with pytest.raises(ValueError, match=r"'folds' parameter of proxy_a_distance .* >= 2"):
        proxy_a_distance(np.zeros((4, 3)), np.ones((4, 3)), folds=1)
    with pytest.raises(ValueError, match=r"'bandwidth' parameter of mmd2 must be a positive"):
        mmd2(np.zeros((4, 3)), np.ones((4, 3)), bandwidth=0.0)
    with pytest.raises(ValueError, match=r"'n_permutations' parameter of mmd2"):
        mmd2(np.zeros((4, 3)), np.ones((4, 3)), n_permutations=-1)
