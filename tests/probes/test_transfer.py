"""Tests of probes.transfer: LogME, LEEP, NCE and H-score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probes.transfer import h_score, leep, logme, nce

# A hand-sized example: 6 target examples, 3 source classes, 2 target classes.
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.2, 0.6],
        [0.1, 0.1, 0.8],
        [0.3, 0.3, 0.4],
    ]
)
LABELS = np.array([0, 0, 1, 1, 1, 0])


def _leep_loops(theta: np.ndarray, y: np.ndarray) -> float:
    n, nz = theta.shape
    classes = sorted(set(y.tolist()))
    joint = {
        (c, z): sum(theta[i, z] for i in range(n) if y[i] == c) / n
        for c in classes
        for z in range(nz)
    }
    pz = {z: sum(joint[c, z] for c in classes) for z in range(nz)}
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[y[i], z] / pz[z] * theta[i, z] for z in range(nz)))
    return total / n


def _nce_loops(z: np.ndarray, y: np.ndarray) -> float:
    n = len(y)
    out = 0.0
    for zv in set(z.tolist()):
        n_z = sum(1 for i in range(n) if z[i] == zv)
        for yv in set(y.tolist()):
            n_yz = sum(1 for i in range(n) if z[i] == zv and y[i] == yv)
            if n_yz:
                out += (n_yz / n) * math.log(n_yz / n_z)
    return out


def _logme_reference(f: np.ndarray, y: np.ndarray, tol: float = 1e-3, max_iter: int = 100) -> float:
    """LogME straight from the paper: explicit (αI + βFᵀF)⁻¹ and log-determinant."""
    n, d = f.shape
    ftf = f.T @ f
    sigma = np.clip(np.linalg.eigvalsh(ftf), 0.0, None)  # all d eigenvalues
    evidences = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)

        def posterior(alpha, beta, t=t):
            a = alpha * np.eye(d) + beta * ftf
            return a, beta * np.linalg.inv(a) @ f.T @ t

        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            lam = alpha / beta
            _, m = posterior(alpha, beta)
            gamma = np.sum(beta * sigma / (alpha + beta * sigma))
            alpha = gamma / (m @ m)
            beta = (n - gamma) / np.sum((t - f @ m) ** 2)
            if abs(alpha / beta - lam) / lam <= tol:
                break
        a, m = posterior(alpha, beta)
        evidence = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - 0.5 * np.linalg.slogdet(a)[1]
            - beta / 2 * np.sum((t - f @ m) ** 2)
            - alpha / 2 * (m @ m)
            - n / 2 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def _h_score_reference(f: np.ndarray, y: np.ndarray, rcond: float = 1e-15) -> float:
    g = np.stack([f[y == c].mean(axis=0) for c in y])  # each row -> its class mean
    cov_f = np.cov(f, rowvar=False, bias=True)
    cov_g = np.cov(g, rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=rcond, hermitian=True) @ cov_g))


def _informative(seed: int, n_per: int = 40, k: int = 3, d: int = 10, sep: float = 2.0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    centres = rng.normal(size=(k, d)) * sep
    return centres[y] + rng.normal(size=(k * n_per, d)), rng.normal(size=(k * n_per, d)), y


# ------------------------------------------------------------------- LEEP, NCE


def test_leep_matches_loops_on_hand_example():
    assert leep(PROBS, LABELS) == pytest.approx(_leep_loops(PROBS, LABELS), abs=1e-12)
    # Labels need not be contiguous ids.
    assert leep(PROBS, LABELS * 5 + 2) == pytest.approx(_leep_loops(PROBS, LABELS), abs=1e-12)


def test_leep_is_non_positive_and_grows_with_informativeness():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    source_class = (y * 3 + 1) % 7  # the target class is a function of a source class
    noise = rng.normal(size=(200, 7))
    values = []
    for strength in (0.0, 0.5, 1.0, 2.0, 4.0):
        logits = noise + strength * np.eye(7)[source_class]
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        values.append(leep(probs, y))
    assert all(v <= 0.0 for v in values)
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    # Uninformative probabilities are close to -H(Y) (log of 4 classes).
    assert values[0] == pytest.approx(-np.log(4), abs=0.1)


def test_nce_matches_loops_and_is_non_positive():
    z = PROBS.argmax(axis=1)
    assert nce(z, LABELS) == pytest.approx(_nce_loops(z, LABELS), abs=1e-12)
    # A probability matrix is reduced to its argmax.
    assert nce(PROBS, LABELS) == nce(z, LABELS)
    rng = np.random.default_rng(1)
    for _ in range(5):
        zz, yy = rng.integers(0, 5, size=50), rng.integers(0, 3, size=50)
        value = nce(zz, yy)
        assert value <= 0.0
        assert value == pytest.approx(_nce_loops(zz, yy), abs=1e-12)


def test_nce_is_zero_when_labels_are_a_function_of_predictions():
    rng = np.random.default_rng(2)
    z = rng.integers(0, 6, size=100)
    perm = rng.permutation(6)
    assert nce(z, perm[z]) == 0.0
    assert nce(z, z % 2) == 0.0  # many-to-one is still a function
    # Independent labels: -H(Y|Z) is about -H(Y) = -log 2.
    assert nce(np.zeros(100, dtype=int), np.arange(100) % 2) == pytest.approx(-np.log(2))


# ---------------------------------------------------------------------- LogME


@pytest.mark.parametrize(("n", "d", "k"), [(60, 8, 3), (25, 40, 2), (30, 30, 4)])
def test_logme_matches_reference_implementation(n, d, k):
    rng = np.random.default_rng(n + d)
    y = np.arange(n) % k
    f = rng.normal(size=(n, d)) + 0.8 * np.eye(k, d)[y]
    assert logme(f, y) == pytest.approx(_logme_reference(f, y), abs=1e-6)


def test_logme_rank_deficient_features_match_reference():
    rng = np.random.default_rng(3)
    y = np.arange(40) % 2
    base = rng.normal(size=(40, 3)) + y[:, None]
    f = base @ rng.normal(size=(3, 6))  # rank 3 in 6 dimensions
    assert logme(f, y) == pytest.approx(_logme_reference(f, y), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_logme_and_h_score_rank_informative_above_random(seed):
    good, bad, y = _informative(seed)
    assert logme(good, y) > logme(bad, y)
    assert h_score(good, y) > h_score(bad, y)


# -------------------------------------------------------------------- H-score


def test_h_score_matches_direct_formula_and_bounds():
    good, bad, y = _informative(4)
    for f in (good, bad):
        value = h_score(f, y)
        assert value == pytest.approx(_h_score_reference(f, y), rel=1e-10)
        assert 0.0 <= value <= 2.0 + 1e-12  # K - 1 = 2


def test_h_score_more_features_than_examples_matches_pinv():
    # n < d: the covariance is singular; the score uses the n x n Gram matrix.
    rng = np.random.default_rng(8)
    y = np.arange(30) % 3
    f = rng.normal(size=(30, 50)) + np.eye(3, 50)[y]
    expected = _h_score_reference(f, y, rcond=1e-10)
    assert h_score(f, y) == pytest.approx(expected, rel=1e-8)
    # Rank-deficient but n > d: a duplicated column adds nothing.
    g, _, yy = _informative(9)
    assert h_score(np.hstack([g, g[:, :1]]), yy) == pytest.approx(h_score(g, yy), rel=1e-8)


def test_h_score_invariant_to_invertible_linear_maps():
    good, _, y = _informative(5)
    rng = np.random.default_rng(6)
    a = rng.normal(size=(10, 10)) + 3.0 * np.eye(10)
    assert np.linalg.cond(a) < 1e3
    assert h_score(good @ a + 7.0, y) == pytest.approx(h_score(good, y), rel=1e-8)


# --------------------------------------------------------- inputs and errors


def test_torch_inputs_equal_numpy_inputs():
    good, _, y = _informative(7)
    ft, yt = torch.from_numpy(good), torch.from_numpy(y)
    assert logme(ft, yt) == logme(good, y)
    assert h_score(ft, yt) == h_score(good, y)
    assert leep(torch.from_numpy(PROBS), torch.from_numpy(LABELS)) == leep(PROBS, LABELS)
    assert nce(torch.from_numpy(PROBS), LABELS) == nce(PROBS, LABELS)


def test_errors_on_bad_input():
    f = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match=r"'labels' parameter must have 20 entries.*Got 19"):
        logme(f, y[:19])
    with pytest.raises(
        ValueError, match=r"'labels' parameter needs at least 2 distinct classes.*Got 1"
    ):
        h_score(f, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match=r"at least 2 distinct classes"):
        nce(np.arange(6) % 3, np.ones(6, dtype=int))
    with pytest.raises(
        ValueError, match=r"'source_probs' parameter must hold probabilities whose rows sum to 1"
    ):
        leep(PROBS * 2.0, LABELS)
    with pytest.raises(ValueError, match=r"'labels' parameter must hold integer class labels"):
        leep(PROBS, LABELS + 0.5)
    bad = f.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"'features' parameter contains 1 NaN or infinite"):
        logme(bad, y)
    with pytest.raises(ValueError, match=r"'features' parameter is all zeros"):
        logme(np.zeros((20, 3)), y)
    with pytest.raises(ValueError, match=r"'tol' parameter of logme"):
        logme(f, y, tol=0.0)


def test_logme_finite_when_features_interpolate_the_labels():
    # n < d with full row rank: every one-vs-rest indicator is fit exactly, which
    # drove beta to infinity before the residual floor.
    rng = np.random.default_rng(0)
    f = rng.normal(size=(30, 200))
    y = np.repeat(np.arange(3), 10)
    value = logme(f, y)
    assert np.isfinite(value)
