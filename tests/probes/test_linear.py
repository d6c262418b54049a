"""Tests of the cross-validated linear probe (probes.linear)."""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from probes._probe_fit import fit_fixed, fold_ids, geometric_middle
from probes.linear import DEFAULT_L2_GRID, ProbeResult, linear_probe, wilson_interval


def _blobs(n=240, d=12, k=3, sep=1.0, seed=0):
    """Gaussian classes whose means differ by ``sep`` along one axis each."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) + sep * np.eye(k, d)[y]
    return x, y


def _split(x, y, frac=0.75):
    cut = int(len(y) * frac)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _standardise(x):
    return (x - x.mean(axis=0)) / x.std(axis=0)


# ----------------------------------------------------------------- limits


def test_linearly_separable_data_is_decoded_almost_perfectly():
    r = linear_probe(*_split(*_blobs(sep=8.0)))
    assert r.accuracy >= 0.98
    assert r.cv_accuracy >= 0.98
    assert r.ci[0] > 0.9
    assert r.n_classes == 3 and r.folds == 3 and r.note is None


def test_shuffled_labels_score_at_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 20))
    y = rng.integers(0, 4, 600)
    r = linear_probe(*_split(x, y))
    # Nothing to learn: the interval covers both floors (uniform guess and majority class).
    assert r.ci[0] <= min(0.25, r.chance) and max(0.25, r.chance) <= r.ci[1]
    assert abs(r.cv_accuracy - 0.25) < 0.08


# --------------------------------------------- independent check of the optimiser


@pytest.mark.parametrize(
    ("n", "d", "k", "l2"),
    # rotated (d <= n/4), unrotated, rotated into the row space (d > 2n)
    [(300, 10, 3, 1e-2), (150, 40, 4, 1e-3), (40, 100, 3, 1e-2)],
)
def test_fixed_strength_fit_matches_sklearn(n, d, k, l2):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _blobs(n=n, d=d, k=k, sep=1.5, seed=2)
    x[:, 1] = x[:, 0]  # a duplicated column and a constant one: rank-deficient features
    x[:, -1] = 3.0
    coef, intercept = fit_fixed(x, y, l2)
    xs = StandardScaler().fit_transform(x)  # constant column -> 0, as in the probe
    # Same objective: mean cross-entropy + l2/2 ||W||^2  <=>  C = 1 / (l2 n).
    ref = LogisticRegression(C=1.0 / (l2 * n), tol=1e-10, max_iter=10_000).fit(xs, y)
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(coef, ref.coef_.T, atol=1e-4 * scale)
    # The intercept is unpenalised, so only its differences between classes are identified.
    np.testing.assert_allclose(
        intercept - intercept.mean(), ref.intercept_ - ref.intercept_.mean(), atol=1e-4 * scale
    )
    np.testing.assert_array_equal((xs @ coef + intercept).argmax(axis=1), ref.predict(xs))


def test_two_classes_match_binary_sklearn_with_halved_penalty():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(n=200, d=30, k=2, sep=1.0, seed=3)
    l2, n = 0.05, 200
    coef, intercept = fit_fixed(x, y, l2)
    # Two softmax columns W0 = -W1 = -w/2 give penalty l2/4 ||w||^2: binary C = 2 / (l2 n).
    ref = LogisticRegression(C=2.0 / (l2 * n), tol=1e-10, max_iter=10_000).fit(_standardise(x), y)
    np.testing.assert_allclose(coef[:, 1] - coef[:, 0], ref.coef_[0], atol=1e-5)
    assert intercept[1] - intercept[0] == pytest.approx(ref.intercept_[0], abs=1e-5)


def test_probe_at_one_strength_predicts_like_sklearn():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(n=400, d=16, k=4, sep=0.8, seed=4)
    xtr, ytr, xte, yte = _split(x, y)
    l2 = 3e-3
    r = linear_probe(xtr, ytr, xte, yte, l2_grid=[l2])
    mean, std = xtr.mean(axis=0), xtr.std(axis=0)
    ref = LogisticRegression(C=1.0 / (l2 * len(ytr)), tol=1e-8, max_iter=10_000)
    ref.fit((xtr - mean) / std, ytr)
    ref_acc = np.mean(ref.predict((xte - mean) / std) == yte)
    # float32 solve: at most one borderline test row may flip.
    assert abs(r.accuracy - ref_acc) <= 1.0 / len(yte) + 1e-12
    assert r.l2 == l2 and r.cv_accuracy is None and r.folds == 0
    assert r.note == "a single l2 value was given: no cross-validation"


# ------------------------------------------------------------------ Wilson


def _wilson_direct(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def test_wilson_interval_known_values_and_formula():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    for k, n in [(0, 5), (3, 7), (50, 100), (999, 1000), (1, 1)]:
        np.testing.assert_allclose(wilson_interval(k, n), _wilson_direct(k, n), atol=1e-12)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    lo, hi = wilson_interval(3, 10)
    assert wilson_interval(7, 10) == pytest.approx((1 - hi, 1 - lo))  # symmetry
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _wilson_textbook(k, n, z=1.959963984540054):
    # Wilson (1927) in its textbook form, no library:
    # (k + z^2/2 -/+ z sqrt(k (n - k) / n + z^2 / 4)) / (n + z^2)
    root = z * math.sqrt(k * (n - k) / n + z * z / 4)
    return (k + z * z / 2 - root) / (n + z * z), (k + z * z / 2 + root) / (n + z * z)


def test_wilson_interval_contains_its_point_estimate_exactly():
    # Every (k, n) up to n = 300 plus large n; k = 0 and k = n included. The
    # containment and [0, 1] checks are exact (the bounds are clamped, not
    # merely close); agreement with the textbook form is float64 rounding of
    # O(1) quantities: 1e-12 absolute.
    cases = [(k, n) for n in range(1, 301) for k in range(n + 1)]
    cases += [(k, n) for n in (1000, 10_007, 123_456) for k in (0, 1, n // 3, n - 1, n)]
    for k, n in cases:
        p = k / n
        lo, hi = wilson_interval(k, n)
        assert 0.0 <= lo <= p <= hi <= 1.0, (k, n, lo, hi)
        ref_lo, ref_hi = _wilson_textbook(k, n)
        assert lo == pytest.approx(max(0.0, ref_lo), abs=1e-12), (k, n)
        assert hi == pytest.approx(min(1.0, ref_hi), abs=1e-12), (k, n)
    # the endpoints that rounding used to miss are exact
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 7)[0] == 0.0
    # known values (z = 1.96): 8/10 -> (0.4902, 0.9433); 0/10 -> (0, 0.2775);
    # 10/10 -> (0.7225, 1); 1/2 -> (0.0945, 0.9055)
    for (k, n), want in {
        (8, 10): (0.4902, 0.9433),
        (0, 10): (0.0, 0.2775),
        (10, 10): (0.7225, 1.0),
        (1, 2): (0.0945, 0.9055),
    }.items():
        assert tuple(round(v, 4) for v in wilson_interval(k, n)) == want


def test_result_ci_is_wilson_of_test_accuracy():
    r = linear_probe(*_split(*_blobs(sep=1.0)))
    correct = round(r.accuracy * r.n_test)
    assert r.ci == pytest.approx(wilson_interval(correct, r.n_test))


# ---------------------------------------------------------- selection hygiene


def test_choice_of_l2_never_sees_the_test_split():
    xtr, ytr, xte, yte = _split(*_blobs(n=400, sep=1.2, seed=5))
    base = linear_probe(xtr, ytr, xte, yte)
    rng = np.random.default_rng(0)
    other = linear_probe(xtr, ytr, rng.normal(size=xte.shape) * 5, rng.permutation(yte))
    assert (other.l2, other.cv_accuracy) == (base.l2, base.cv_accuracy)
    assert other.accuracy != base.accuracy


def test_cv_accuracy_drives_the_choice():
    xtr, ytr, xte, yte = _split(*_blobs(n=400, sep=1.0, seed=6))
    grid = [10.0, 1e-2]  # far too strong vs reasonable
    r = linear_probe(xtr, ytr, xte, yte, l2_grid=grid)
    assert r.l2 == 1e-2
    strong = linear_probe(xtr, ytr, xte, yte, l2_grid=[10.0, 5.0])
    assert strong.cv_accuracy <= r.cv_accuracy


def test_invariant_to_per_feature_affine_rescaling():
    xtr, ytr, xte, yte = _split(*_blobs(n=300, d=8, sep=1.0, seed=7))
    scale = np.linspace(0.01, 100, 8)
    shift = np.linspace(-50, 50, 8)
    a = linear_probe(xtr, ytr, xte, yte)
    b = linear_probe(xtr * scale + shift, ytr, xte * scale + shift, yte)
    assert (a.l2, a.accuracy) == (b.l2, b.accuracy)
    assert a.cv_accuracy == pytest.approx(b.cv_accuracy)


def test_folds_are_sklearns_stratified_kfold():
    from sklearn.model_selection import StratifiedKFold

    y = np.repeat([0, 1, 2], [9, 6, 30])
    fold = fold_ids(y, 3, seed=0)
    for c in range(3):
        counts = np.bincount(fold[y == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    splits = StratifiedKFold(3, shuffle=True, random_state=0).split(np.zeros(len(y)), y)
    for j, (_, val) in enumerate(splits):
        assert np.array_equal(np.flatnonzero(fold == j), np.sort(val))


# ------------------------------------------------------------------ labels


def test_arbitrary_labels_are_remapped():
    xtr, ytr, xte, yte = _split(*_blobs(sep=1.5, seed=8))
    codes = np.array([3, 7, 42])  # order-preserving, so the folds are the same
    a = linear_probe(xtr, ytr, xte, yte)
    b = linear_probe(xtr, codes[ytr], xte, codes[yte])
    assert (a.accuracy, a.l2, a.cv_accuracy, a.chance) == (
        b.accuracy,
        b.l2,
        b.cv_accuracy,
        b.chance,
    )


def test_unseen_test_labels_count_as_errors():
    xtr, ytr, xte, yte = _split(*_blobs(sep=8.0, seed=9))
    base = linear_probe(xtr, ytr, xte, yte)
    yte_new = yte.copy()
    yte_new[:5] = 99
    r = linear_probe(xtr, ytr, xte, yte_new)
    assert round(r.accuracy * r.n_test) == round(base.accuracy * base.n_test) - 5


def test_chance_is_majority_training_class_on_test():
    rng = np.random.default_rng(10)
    ytr = np.array([0] * 10 + [1] * 30 + [2] * 20)
    xtr = rng.normal(size=(60, 4))
    yte = np.array([1, 1, 0, 2, 2])
    r = linear_probe(xtr, ytr, rng.normal(size=(5, 4)), yte)
    assert r.chance == pytest.approx(2 / 5)


def test_two_classes():
    r = linear_probe(*_split(*_blobs(k=2, sep=6.0, seed=11)))
    assert r.n_classes == 2 and r.accuracy >= 0.97


def test_rare_class_reduces_folds_then_skips_cv():
    x, y = _blobs(n=120, sep=3.0, seed=12)
    y = y.copy()
    y[:2] = 5  # a class with two training examples
    xte, yte = _blobs(n=30, sep=3.0, seed=13)
    r = linear_probe(x, y, xte, yte, folds=3)
    assert r.folds == 2 and r.note.startswith("folds reduced from 3 to 2: training class 5")
    y[1] = 0  # now one example: no cross-validation possible
    r = linear_probe(x, y, xte, yte, folds=3)
    assert r.folds == 0 and r.cv_accuracy is None
    assert r.l2 == pytest.approx(geometric_middle(DEFAULT_L2_GRID))
    assert "single example" in r.note and r.accuracy > 0.8


# ------------------------------------------------------------------ inputs


def test_zero_variance_columns_are_harmless():
    xtr, ytr, xte, yte = _split(*_blobs(d=6, sep=2.0, seed=14))
    pad = lambda a: np.hstack([a, np.full((len(a), 2), 7.0)])  # noqa: E731
    a = linear_probe(xtr, ytr, xte, yte)
    b = linear_probe(pad(xtr), ytr, pad(xte), yte)
    assert np.isfinite(b.accuracy) and (a.accuracy, a.l2) == (b.accuracy, b.l2)


def test_more_features_than_rows():
    # d > n: the solve runs exactly in the n-dimensional row space of the training rows.
    rng = np.random.default_rng(15)
    means = rng.normal(size=(3, 300)) * 0.5  # classes about 12 noise sd apart
    y = rng.integers(0, 3, 80)
    x = rng.normal(size=(80, 300)) + means[y]
    r = linear_probe(*_split(x, y))
    assert r.accuracy >= 0.95 and r.cv_accuracy >= 0.9


def test_torch_input_equals_numpy_input():
    xtr, ytr, xte, yte = _split(*_blobs(seed=16))
    xtr, xte = xtr.astype(np.float32), xte.astype(np.float32)
    a = linear_probe(xtr, ytr, xte, yte)
    t = torch.from_numpy
    assert linear_probe(t(xtr), t(ytr), t(xte), t(yte)) == a
    assert linear_probe(t(xtr).double(), t(ytr).int(), t(xte).double(), t(yte)) == a


def test_deterministic_and_threads_restored():
    data = _split(*_blobs(seed=17))
    before = torch.get_num_threads()
    assert linear_probe(*data, seed=3) == linear_probe(*data, seed=3)
    assert torch.get_num_threads() == before


def test_to_dict_is_plain_json():
    r = linear_probe(*_split(*_blobs(seed=18)))
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert isinstance(d["ci"], list) and len(d["ci"]) == 2
    assert set(d) >= {"accuracy", "ci", "n_train", "n_test", "n_classes", "l2", "cv_accuracy"}
    assert isinstance(r, ProbeResult)
    none_cv = linear_probe(*_split(*_blobs(seed=18)), l2_grid=[1e-2]).to_dict()
    assert none_cv["cv_accuracy"] is None


# ------------------------------------------------------------------ errors


def test_single_training_class_is_an_error():
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"single class \(label 4\).*at least 2 classes"):
        linear_probe(x, np.full(20, 4), x, np.full(20, 4))


def test_mismatched_shapes_are_named():
    x = np.zeros((10, 3))
    y = np.array([0, 1] * 5)
    with pytest.raises(
        ValueError, match=r"'x_train' has shape \(10, 3\) but 'y_train' has shape \(9,\)"
    ):
        linear_probe(x, y[:9], x, y)
    with pytest.raises(
        ValueError, match=r"'x_test' has shape \(10, 3\) but 'y_test' has shape \(8,\)"
    ):
        linear_probe(x, y, x, y[:8])
    with pytest.raises(ValueError, match=r"\(10, 3\) but 'x_test' has shape \(10, 4\)"):
        linear_probe(x, y, np.zeros((10, 4)), y)


def test_non_finite_features_are_an_error():
    x, y = _blobs(n=30)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="'x_train' parameter contains 1 NaN or infinite"):
        linear_probe(x, y, x[:5], y[:5])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"l2_grid": []}, "'l2_grid' parameter of linear_probe must be a non-empty"),
        ({"l2_grid": [1.0, -1.0]}, "'l2_grid'.*positive finite"),
        ({"l2_grid": [np.inf]}, "'l2_grid'"),
        ({"folds": 1}, "'folds' parameter of linear_probe must be an int >= 2. Got 1"),
        ({"max_iter": 0}, "'max_iter'.*>= 1"),
    ],
)
def test_invalid_parameters(kwargs, match):
    x, y = _blobs(n=30)
    with pytest.raises(ValueError, match=match):
        linear_probe(x, y, x, y, **kwargs)


def test_negative_labels_are_an_error():
    x, y = _blobs(n=30)
    with pytest.raises(ValueError, match="non-negative class labels"):
        linear_probe(x, y - 1, x, y)


# ------------------------------------------- pinned results and large inputs


def _network_like(n, d, k=10, seed=0):
    """Skewed, correlated features with classes in a low-rank subspace and 10% label noise."""
    rng = np.random.default_rng(seed)
    rank = min(d, 64)
    mix = rng.standard_normal((d, d)) / np.sqrt(d) * (np.arange(1, d + 1) ** -0.5)[:, None] * 4
    means = rng.standard_normal((k, rank)) * 0.6
    y = rng.integers(0, k, n)
    z = rng.standard_normal((n, d))
    z[:, :rank] += means[y]
    x = z @ mix + 0.3 * rng.standard_normal((n, d))
    x = np.maximum(x, 0) + 0.05 * x
    y = np.where(rng.random(n) < 0.1, rng.integers(0, k, n), y)
    return x.astype(np.float32), y


@pytest.mark.parametrize(
    ("data", "l2", "accuracy", "cv_accuracy"),
    # Recorded with the scipy L-BFGS-B solver on scikit-learn's StratifiedKFold folds.
    # On the hand-written folds of before, the same solver chose the strengths pinned by
    # the hand-written L-BFGS (0.133, 0.0316, 0.562) with the same accuracies to 1e-7.
    # On these folds, the exact path (scikit-learn, float64, tol 1e-10, each fold
    # standardised on its own rows) peaks at the chosen strength in all three cases.
    [
        (lambda: _blobs(600, 40, 5, 0.6, 21), 0.5623413251903491, 0.3, 0.3288889),
        (lambda: _network_like(1000, 64, seed=3), 0.1333521432163324, 0.744, 0.7493333),
        (lambda: _network_like(800, 512, seed=4), 0.5623413251903491, 0.8, 0.7933333),
    ],
)
def test_pinned_choice_and_accuracy(data, l2, accuracy, cv_accuracy):
    xtr, ytr, xte, yte = _split(*data())
    r = linear_probe(xtr, ytr, xte, yte)
    assert r.l2 == pytest.approx(l2, rel=1e-12)
    assert r.accuracy == pytest.approx(accuracy, abs=1e-6)
    # The path ranks strengths at a gradient tolerance of 1e-3: its fold solutions may
    # sit one borderline validation row from the exact ones. One row of n moves the
    # mean over folds by 1/n.
    assert r.cv_accuracy == pytest.approx(cv_accuracy, abs=1.0 / len(ytr) + 1e-6)
    assert r.converged and 0 < r.n_iter <= 200


def test_chosen_strength_is_the_peak_of_the_exact_path():
    # The exact path, independently: scikit-learn per fold at each strength of the grid.
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, xte, yte = _split(*_blobs(600, 40, 5, 0.6, 21))
    r = linear_probe(xtr, ytr, xte, yte)
    fold = fold_ids(ytr, r.folds, seed=0)
    xs = (xtr - xtr.mean(axis=0)) / xtr.std(axis=0)  # the probe standardises on all of xtr
    exact = {}
    for l2 in DEFAULT_L2_GRID:
        accs = []
        for j in range(r.folds):
            tr, va = fold != j, fold == j
            ref = LogisticRegression(C=1.0 / (l2 * tr.sum()), tol=1e-10, max_iter=10_000)
            accs.append(np.mean(ref.fit(xs[tr], ytr[tr]).predict(xs[va]) == ytr[va]))
        exact[l2] = float(np.mean(accs))
    # Tied on the exact path: within one validation row of its best.
    assert exact[r.l2] >= max(exact.values()) - 1.0 / len(ytr) - 1e-12


def test_a_probe_stopped_at_max_iter_says_it_did_not_converge():
    xtr, ytr, xte, yte = _split(*_network_like(600, 64, seed=1))
    with pytest.warns(ConvergenceWarning, match="did not converge after 1 L-BFGS"):
        r = linear_probe(xtr, ytr, xte, yte, max_iter=1)
    assert r.n_iter == 1 and r.converged is False and r.stop_reason
    assert r.to_dict()["converged"] is False


def test_the_warning_gives_the_fix_that_applies_to_why_the_solve_stopped():
    from probes.linear import _not_converged

    limit = _not_converged(1, "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT")
    assert limit.endswith("raise max_iter, or scale the features.")
    flat = _not_converged(3, "ABNORMAL: ")
    assert "(ABNORMAL:)" in flat and "no lower point" in flat and "max_iter" not in flat


def _small_separable(seed: int):
    """30 rows of 256 ReLU-like features (a third dead), three separable classes: the
    case where the float32 polish can find no lower point near the optimum."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 10)
    z = (rng.standard_normal((3, 8)) * 2)[y] + 0.3 * rng.standard_normal((30, 8))
    x = np.maximum(z @ rng.standard_normal((8, 256)), 0).astype(np.float32) * 0.05
    x[:, rng.random(256) < 0.3] = 0
    return x, y


@pytest.mark.parametrize("seed", [31, 41])
def test_a_float32_stall_is_solved_again_in_float64(seed, monkeypatch):
    import probes.linear as linear

    x, y = _small_separable(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # no false alarm
        r = linear_probe(x, y, x, y, seed=0)
    assert r.converged and r.stop_reason == "gradient within tolerance"
    # Wherever the float32 polish stalls (it did on these seeds on one machine; rounding
    # differs elsewhere), the refit is float64, from zero, at the chosen strength.
    calls, real = [], linear.cv_path

    def stalling(design, *args, **kwargs):
        path = real(design, *args, **kwargs)
        calls.append((design.dtype, kwargs.get("warm") is not None))
        if design.dtype == torch.float32 and kwargs.get("warm") is not None:
            path.converged[0], path.messages[0] = False, "ABNORMAL: "
        return path

    monkeypatch.setattr(linear, "cv_path", stalling)
    again = linear_probe(x, y, x, y, seed=0)
    assert calls[-1] == (torch.float64, False) and again.converged
    assert (again.l2, again.accuracy) == (r.l2, r.accuracy)


def test_chosen_strength_predicts_like_sklearn_at_that_c():
    from sklearn.linear_model import LogisticRegression

    x, y = _network_like(1000, 64, seed=3)
    xtr, ytr, xte, yte = _split(x.astype(np.float64), y)
    r = linear_probe(xtr, ytr, xte, yte)
    mean, std = xtr.mean(axis=0), xtr.std(axis=0)
    ref = LogisticRegression(C=1.0 / (r.l2 * len(ytr)), tol=1e-8, max_iter=10_000)
    ref.fit((xtr - mean) / std, ytr)
    ref_acc = np.mean(ref.predict((xte - mean) / std) == yte)
    # float32 solve stopped at sklearn's default tolerance: at most one borderline row flips.
    assert abs(r.accuracy - ref_acc) <= 1.0 / len(yte) + 1e-12


def _fields(r):
    return np.array([r.accuracy, *r.ci, r.l2, r.cv_accuracy or 0.0, r.chance])


@pytest.mark.parametrize(("n", "d"), [(900, 16), (300, 120)])  # rotated, and unrotated
def test_memmap_input_gives_the_same_result(tmp_path, monkeypatch, n, d):
    import probes._design as fit

    monkeypatch.setattr(fit, "_BLOCK_ELEMS", 2000)  # several row blocks per pass
    monkeypatch.setattr(fit, "_BLOCK_ROWS", 16)
    x, y = _network_like(n, d, k=4, seed=5)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    cut = int(0.75 * n)
    a = linear_probe(x[:cut], y[:cut], x[cut:], y[cut:])
    b = linear_probe(xm[:cut], y[:cut], xm[cut:], y[cut:])
    assert isinstance(xm[:cut], np.memmap)
    np.testing.assert_allclose(_fields(b), _fields(a), atol=1e-6)
    assert (a.n_train, a.n_test, a.folds, a.note) == (b.n_train, b.n_test, b.folds, b.note)


def test_memmap_non_finite_values_are_reported(tmp_path):
    x, y = _blobs(n=60)
    x[7, 1] = np.inf
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="'x_train' parameter contains 1 NaN or infinite"):
        linear_probe(xm, y, xm[:5], y[:5])


def _anon_rss() -> int:
    with open("/proc/self/statm") as f:
        _, resident, shared = (int(v) for v in f.read().split()[:3])
    return (resident - shared) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_memmap_training_never_copies_x(tmp_path):
    import threading
    import tracemalloc

    rng = np.random.default_rng(0)
    n, d = 200_000, 64
    y = rng.integers(0, 5, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, :5] += 0.5 * np.eye(5, dtype=np.float32)[y]
    np.save(tmp_path / "x.npy", x)
    del x
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    size = xm.nbytes  # 51 MB; a float64 copy would be twice that
    peak, stop = [0], threading.Event()
    base = _anon_rss()

    def watch():  # numpy allocations show in tracemalloc; torch's only in the RSS
        while not stop.is_set():
            peak[0] = max(peak[0], _anon_rss() - base)
            stop.wait(0.002)

    watcher = threading.Thread(target=watch)
    tracemalloc.start()
    watcher.start()
    try:
        r = linear_probe(xm[:150_000], y[:150_000], xm[150_000:], y[150_000:], l2_grid=[1e-2])
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        stop.set()
        watcher.join()
        tracemalloc.stop()
    assert r.accuracy > 0.3 and r.n_train == 150_000
    assert traced < 0.25 * size, f"numpy peak {traced / 1e6:.1f} MB for a {size / 1e6:.0f} MB X"
    # A float32 copy of the training rows alone would be 0.75 * size.
    assert peak[0] < 0.6 * size, f"anonymous RSS grew {peak[0] / 1e6:.1f} MB"
