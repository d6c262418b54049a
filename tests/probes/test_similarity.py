"""Tests of probes.similarity: CKA (linear/RBF, biased/debiased) and MinibatchCKA.

The references below are written directly from the published formulas
(Kornblith et al. 2019; Song et al. 2012) with explicit n x n matrices, so
they share no code with the implementation. ``kornblith_*`` transcribe the
paper's reference code (``gram_rbf``, ``center_gram``, ``cka``) line by line.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from probes import similarity as sim
from probes.gap import mmd2
from probes.similarity import MinibatchCKA, cka, gram_linear, gram_rbf, hsic

KERNELS = ["linear", "rbf"]
BOTH = [False, True]


# ---------------------------------------------------------------- references
def ref_gram_linear(x):
    return x @ x.T


def ref_gram_rbf(x, threshold=1.0):
    # Kornblith et al. (2019), reference code ``gram_rbf``: the median is over
    # all n^2 squared distances, the zero diagonal included.
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold**2 * sq_median_distance))


def kornblith_center_gram(gram, unbiased=False):
    # Reference code ``center_gram``; unbiased=True is the U-statistic
    # centring whose inner product is proportional to Song et al.'s HSIC.
    gram = gram.copy()
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0, dtype=np.float64)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def kornblith_cka(gram_x, gram_y, debiased=False):
    # Reference code ``cka``.
    gram_x = kornblith_center_gram(gram_x, unbiased=debiased)
    gram_y = kornblith_center_gram(gram_y, unbiased=debiased)
    scaled_hsic = gram_x.ravel().dot(gram_y.ravel())
    return scaled_hsic / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


def ref_hsic_biased(k, l):  # noqa: E741
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def ref_hsic_song(k, l):  # noqa: E741
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l - np.diag(np.diag(l))
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 * one @ kt @ lt @ one / (n - 2)
    ) / (n * (n - 3))


def ref_cka(k, l, debiased):  # noqa: E741
    f = ref_hsic_song if debiased else ref_hsic_biased
    return f(k, l) / math.sqrt(f(k, k) * f(l, l))


def related_pair(rng, n=60, p=5, q=7, noise=1.0):
    x = rng.normal(size=(n, p))
    y = x @ rng.normal(size=(p, q)) + noise * rng.normal(size=(n, q))
    return x, y


def random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------- invariances
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("debiased", BOTH)
@pytest.mark.parametrize("shape", [(50, 6), (12, 30)])  # feature-space and Gram paths
def test_self_similarity_is_one(kernel, debiased, shape):
    x = np.random.default_rng(0).normal(size=shape)
    assert cka(x, x, kernel=kernel, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("debiased", BOTH)
def test_symmetric(kernel, debiased):
    x, y = related_pair(np.random.default_rng(1))
    a = cka(x, y, kernel=kernel, debiased=debiased)
    b = cka(y, x, kernel=kernel, debiased=debiased)
    assert 0.1 < abs(a) < 0.99
    assert a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("debiased", BOTH)
def test_invariant_to_orthogonal_scaling_and_translation(kernel, debiased):
    rng = np.random.default_rng(2)
    x, y = related_pair(rng)
    base = cka(x, y, kernel=kernel, debiased=debiased)
    q = random_orthogonal(rng, x.shape[1])
    assert np.allclose(q.T @ q, np.eye(x.shape[1]))
    moved = 7.5 * x @ q + rng.normal(size=x.shape[1]) * 100
    y_moved = 0.01 * y - 3.0
    assert cka(moved, y, kernel=kernel, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert cka(moved, y_moved, kernel=kernel, debiased=debiased) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
def test_not_invariant_to_badly_conditioned_linear_map(kernel):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 5))
    a = np.diag([1.0, 1.0, 1.0, 1.0, 100.0]) @ random_orthogonal(rng, 5)
    assert np.linalg.cond(a) == pytest.approx(100.0)
    # invertible, so a linear probe sees no difference; CKA does
    assert cka(x, x @ a, kernel=kernel) < 0.6
    y = x[:, :3] + 0.5 * rng.normal(size=(200, 3))
    assert abs(cka(x, y, kernel=kernel) - cka(x @ a, y, kernel=kernel)) > 0.2


# ---------------------------------------------------------------- two forms agree
@pytest.mark.parametrize("debiased", BOTH)
def test_feature_space_form_equals_gram_form(debiased):
    x, y = related_pair(np.random.default_rng(4), n=40, p=6, q=9)
    xc, yc = x - x.mean(0), y - y.mean(0)
    feat = sim._linear_cka_features(xc, yc, debiased)
    gram = sim._gram_cka(xc @ xc.T, yc @ yc.T, debiased)
    assert feat == pytest.approx(gram, abs=1e-10)
    # the debiased feature-space terms hold for uncentred X, Y as well, term by term
    if debiased:
        from probes._hsic import hsic_gram, hsic_linear_features

        xs, ys = x + 3.0, y - 1.0
        terms = hsic_linear_features(xs, ys, debiased=True)
        gx, gy = xs @ xs.T, ys @ ys.T
        expected = (hsic_gram(gx, gy, True), hsic_gram(gx, gx, True), hsic_gram(gy, gy, True))
        assert np.allclose(terms, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("debiased", BOTH)
def test_public_cka_agrees_across_paths(debiased):
    # n > p, q takes the feature-space path; appending zero columns until p >= n
    # forces the Gram path on the same kernel matrix.
    x, y = related_pair(np.random.default_rng(5), n=20, p=4, q=5)
    wide = np.hstack([x, np.zeros((20, 30))])
    assert cka(x, y, debiased=debiased) == pytest.approx(cka(wide, y, debiased=debiased), abs=1e-10)


# ---------------------------------------------------------------- independent implementation
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("debiased", BOTH)
def test_matches_direct_numpy_formulas(kernel, debiased):
    x, y = related_pair(np.random.default_rng(6), n=15, p=4, q=3)
    make = ref_gram_linear if kernel == "linear" else ref_gram_rbf
    k, l = make(x), make(y)  # noqa: E741
    ref = ref_hsic_song if debiased else ref_hsic_biased
    assert hsic(k, l, debiased=debiased) == pytest.approx(ref(k, l), rel=1e-10, abs=1e-12)
    assert cka(x, y, kernel=kernel, debiased=debiased) == pytest.approx(
        ref_cka(k, l, debiased), abs=1e-10
    )


@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
def test_rbf_gram_matches_reference_gram_rbf(threshold):
    # float64 on O(1) entries; only the summation order differs: 1e-12.
    x = np.random.default_rng(7).normal(size=(11, 3))
    assert np.allclose(gram_rbf(x, threshold), ref_gram_rbf(x, threshold), atol=1e-12, rtol=0)
    assert np.allclose(gram_linear(x), x @ x.T, atol=1e-12, rtol=0)
    x2, y2 = related_pair(np.random.default_rng(8), n=15, p=3, q=4)
    expected = ref_cka(ref_gram_rbf(x2, threshold), ref_gram_rbf(y2, threshold), False)
    assert cka(x2, y2, kernel="rbf", threshold=threshold) == pytest.approx(expected, abs=1e-10)


# ---------------------------------------------------------------- RBF convention of the paper
@pytest.mark.parametrize("threshold", [0.5, 1.0])
@pytest.mark.parametrize("debiased", BOTH)
def test_rbf_cka_equals_the_reference_code(threshold, debiased):
    # Issue 13: 60 x 10 Gaussian features and a noisy linear map. With the
    # distinct-pair median the biased value at t = 0.5 was 0.7749; the
    # reference code gives 0.7764.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 10))
    y = x @ rng.normal(size=(10, 10)) + rng.normal(size=(60, 10))
    kx, ky = ref_gram_rbf(x, threshold), ref_gram_rbf(y, threshold)
    expected = kornblith_cka(kx, ky, debiased)
    # Song et al.'s HSIC is proportional to the reference's unbiased centring,
    # so both transcriptions give the same ratio.
    assert ref_cka(kx, ky, debiased) == pytest.approx(expected, abs=1e-12)
    got = cka(x, y, kernel="rbf", debiased=debiased, threshold=threshold)
    # The issue asks 1e-6; both sides are float64 and differ only in the
    # summation order of O(n^2) O(1) terms (~n^2 eps ~ 1e-12), so 1e-9 holds
    # with a wide margin on any BLAS.
    assert got == pytest.approx(expected, abs=1e-9)
    if not debiased and threshold == 0.5:
        assert round(got, 4) == 0.7764
    # torch float64 input takes the same path
    t64 = cka(
        torch.from_numpy(x),
        torch.from_numpy(y),
        kernel="rbf",
        debiased=debiased,
        threshold=threshold,
    )
    assert t64 == pytest.approx(expected, abs=1e-9)


def test_rbf_median_includes_the_zero_diagonal():
    # n = 4 points on a line: the 16 entries of D are 4 zeros (the diagonal)
    # and the pair distances 1, 1, 1, 4, 4, 9 twice each. Sorted:
    # 0 0 0 0 1 1 1 1 1 1 4 4 4 4 9 9 -> median m = 1, whereas the median over
    # the distinct pairs alone would be 2.5.
    from probes._hsic import median_sq_distance
    from probes._mmd import pooled_sq_distances

    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert median_sq_distance(pooled_sq_distances(x)) == 1.0
    k = gram_rbf(x)
    assert k[0, 3] == pytest.approx(math.exp(-9 / 2), rel=1e-12)


def test_rbf_identical_rows_and_constant_kernel_are_exact():
    # 0.1, 0.7 are not exact in binary: the Gram trick would leave ~1e-17
    # distances between the duplicated rows; they must be exactly 0 (K = 1).
    x = np.array([[0.1, 0.7], [1.3, -0.2], [0.1, 0.7], [2.0, 0.4], [0.1, 0.7]])
    k = gram_rbf(x)
    assert k[0, 2] == 1.0 and k[0, 4] == 1.0 and k[2, 4] == 1.0
    assert np.all(np.diag(k) == 1.0)
    # all rows identical: the constant kernel, and CKA is defined as 0.0
    same = np.tile([[0.1, 0.7, -3.3]], (6, 1))
    assert np.all(gram_rbf(same) == 1.0)
    y = np.random.default_rng(16).normal(size=(6, 2))
    for debiased in BOTH:
        assert cka(same, y, kernel="rbf", debiased=debiased) == 0.0


def test_mmd_keeps_gretton_distinct_pair_median():
    # The CKA convention must not leak into MMD: mmd2's bandwidth is the median
    # Euclidean distance over distinct pairs of the pooled sample, and the
    # statistic is the unbiased MMD^2 with that sigma.
    rng = np.random.default_rng(17)
    a, b = rng.normal(size=(20, 3)), rng.normal(0.5, 1.0, size=(25, 3))
    z = np.concatenate([a, b])
    sigma = float(np.median(pdist(z)))
    cka_scale = math.sqrt(float(np.median(((z[:, None] - z[None]) ** 2).sum(-1))))
    assert abs(sigma - cka_scale) > 1e-3  # the two conventions really differ here
    got = mmd2(a, b, n_permutations=0)
    # float64, summation order only: 1e-12 relative
    assert got.bandwidth == pytest.approx(sigma, rel=1e-12)
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    k = np.exp(-d2 / (2 * sigma**2))
    n, m = len(a), len(b)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    expected = (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )
    assert got.mmd2 == pytest.approx(expected, rel=1e-10, abs=1e-12)


# ---------------------------------------------------------------- hand-computed values
def test_known_values_by_hand():
    # 1-D features: linear CKA is the squared Pearson correlation.
    # xc = (-1.5, -0.5, 0.5, 1.5), yc = (-6.5, -3.5, 1.5, 8.5): (25)^2 / (5 * 129)
    assert cka([[1], [2], [3], [4]], [[1], [4], [9], [16]]) == pytest.approx(125 / 129, abs=1e-14)
    # X^T X = 2 I (Frobenius 2 sqrt 2), Y^T Y = 2, Y^T X = (2, 0): 4 / (2 sqrt 2 * 2)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert cka(x, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-14)
    # HSIC(K, K) for x = 0..4: (sum (x - 2)^2)^2 / (n-1)^2 = 100 / 16
    g = gram_linear(np.arange(5.0))
    assert hsic(g, g) == pytest.approx(6.25, abs=1e-12)
    # D = [[0, 1, 9], [1, 0, 4], [9, 4, 0]]: the median of all nine entries is
    # m = 1 (the distinct-pair median would be 4), so K_ij = exp(-D_ij / 2)
    k = gram_rbf(np.array([[0.0], [1.0], [3.0]]))
    assert k[0, 1] == pytest.approx(math.exp(-1 / 2), rel=1e-12)
    assert k[0, 2] == pytest.approx(math.exp(-9 / 2), rel=1e-12)
    assert k[1, 2] == pytest.approx(math.exp(-4 / 2), rel=1e-12)
    # threshold t = 0.5: exp(-D / (2 t^2 m)) = exp(-2 D)
    k = gram_rbf(np.array([[0.0], [1.0], [3.0]]), threshold=0.5)
    assert k[1, 2] == pytest.approx(math.exp(-8.0), rel=1e-12)


# ---------------------------------------------------------------- bias
def test_debiased_removes_the_small_sample_bias():
    rng = np.random.default_rng(9)
    draws = [(rng.normal(size=(20, 50)), rng.normal(size=(20, 50))) for _ in range(10)]
    biased = np.array([cka(x, y) for x, y in draws])
    unbiased = np.array([cka(x, y, debiased=True) for x, y in draws])
    assert biased.min() > 0.5  # independent, yet the biased estimate is large
    assert abs(unbiased.mean()) < 0.05 and np.abs(unbiased).max() < 0.25
    x, y = rng.normal(size=(2000, 20)), rng.normal(size=(2000, 20))
    assert abs(cka(x, y, debiased=True)) < 0.005
    assert cka(x, y) > abs(cka(x, y, debiased=True))


# ---------------------------------------------------------------- minibatch
def test_minibatch_approaches_full_debiased_cka():
    rng = np.random.default_rng(10)
    x, y = related_pair(rng, n=2000, p=10, q=12, noise=2.0)
    full = cka(x, y, debiased=True)
    metric = MinibatchCKA()
    for i in range(0, 2000, 200):
        metric.update(x[i : i + 200], y[i : i + 200])
    assert (metric.n_batches, metric.n_samples) == (10, 2000)
    assert 0.3 < full < 0.9
    assert metric.compute() == pytest.approx(full, abs=0.02)


@pytest.mark.parametrize("shape", [(50, 6), (10, 12)])  # feature-space and Gram paths
def test_minibatch_single_batch_equals_debiased_cka(shape):
    rng = np.random.default_rng(11)
    x = rng.normal(size=shape)
    y = np.tanh(x) + 0.3 * rng.normal(size=shape)
    metric = MinibatchCKA()
    metric.update(torch.from_numpy(x), y)
    assert metric.compute() == pytest.approx(cka(x, y, debiased=True), abs=1e-12)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert metric.compute() == pytest.approx(ref_cka(xc @ xc.T, yc @ yc.T, True), abs=1e-10)


def test_minibatch_reset_and_errors():
    metric = MinibatchCKA()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    rng = np.random.default_rng(12)
    with pytest.raises(ValueError, match="at least 4 examples"):
        metric.update(rng.normal(size=(3, 2)), rng.normal(size=(3, 2)))
    with pytest.raises(ValueError, match=r"shape \(8, 2\).*shape \(7, 2\)"):
        metric.update(rng.normal(size=(8, 2)), rng.normal(size=(7, 2)))
    metric.update(rng.normal(size=(8, 2)), rng.normal(size=(8, 3)))
    with pytest.raises(ValueError, match=r"differ from the earlier minibatches"):
        metric.update(rng.normal(size=(8, 4)), rng.normal(size=(8, 3)))
    assert (metric.n_batches, metric.n_samples) == (1, 8)
    metric.reset()
    assert (metric.n_batches, metric.n_samples) == (0, 0)
    x = rng.normal(size=(8, 4))
    metric.update(x, x)  # new dimensions are fine after reset
    assert metric.compute() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"'kernel' parameter of MinibatchCKA must be one of"):
        MinibatchCKA(kernel="rbf")


# ---------------------------------------------------------------- degenerate inputs and errors
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("debiased", BOTH)
def test_constant_features_and_representations_give_no_nan(kernel, debiased):
    rng = np.random.default_rng(13)
    x, y = related_pair(rng, n=30)
    with_const = np.hstack([x, np.full((30, 2), 0.1)])  # 0.1 has no exact mean
    a = cka(with_const, y, kernel=kernel, debiased=debiased)
    assert a == pytest.approx(cka(x, y, kernel=kernel, debiased=debiased), abs=1e-10)
    dead = np.full((30, 4), 0.1)
    assert cka(dead, y, kernel=kernel, debiased=debiased) == 0.0
    assert cka(dead, dead, kernel=kernel, debiased=debiased) == 0.0
    metric = MinibatchCKA()
    metric.update(dead, y)
    assert metric.compute() == 0.0


def test_rbf_with_mostly_duplicate_rows_is_finite():
    x = np.zeros((10, 2))
    x[:3] = [[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]  # median pairwise distance is 0
    k = gram_rbf(x)
    assert np.isfinite(k).all() and k.min() < 0.5
    assert cka(x, x, kernel="rbf") == pytest.approx(1.0)


def test_input_errors():
    rng = np.random.default_rng(14)
    with pytest.raises(ValueError, match="at least 4"):
        cka(rng.normal(size=(3, 2)), rng.normal(size=(3, 2)), debiased=True)
    with pytest.raises(ValueError, match="at least 4"):
        hsic(np.eye(3), np.eye(3), debiased=True)
    with pytest.raises(ValueError, match=r"x with shape \(5, 3\) and y with shape \(4, 3\)"):
        cka(rng.normal(size=(5, 3)), rng.normal(size=(4, 3)))
    bad = rng.normal(size=(6, 2))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        cka(bad, rng.normal(size=(6, 2)))
    with pytest.raises(ValueError, match=r"'kernel' parameter of cka must be one of"):
        cka(bad, bad, kernel="cosine")
    with pytest.raises(ValueError, match="'threshold' parameter of cka must be a positive"):
        cka(rng.normal(size=(6, 2)), rng.normal(size=(6, 2)), kernel="rbf", threshold=0.0)
    with pytest.raises(TypeError, match="'debiased' parameter of cka must be a bool"):
        cka(rng.normal(size=(6, 2)), rng.normal(size=(6, 2)), debiased="yes")
    with pytest.raises(ValueError, match="square"):
        hsic(np.ones((4, 3)), np.ones((4, 3)))


def test_torch_tensors_match_numpy():
    x, y = related_pair(np.random.default_rng(15), n=40)
    for kernel in KERNELS:
        for debiased in BOTH:
            ref = cka(x, y, kernel=kernel, debiased=debiased)
            t64 = cka(torch.from_numpy(x), torch.from_numpy(y), kernel=kernel, debiased=debiased)
            assert t64 == pytest.approx(ref, abs=1e-12)
            t32 = cka(
                torch.from_numpy(x).float(), torch.from_numpy(y), kernel=kernel, debiased=debiased
            )
            assert t32 == pytest.approx(ref, abs=1e-5)
    assert isinstance(cka(torch.from_numpy(x), y), float)
