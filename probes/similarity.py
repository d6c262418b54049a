"""Representation similarity: Centered Kernel Alignment (CKA).

CKA (Kornblith et al., ICML 2019) compares two representations of the *same*
examples, e.g. one layer of a pretrained and of a fine-tuned model on a fixed
source batch. With K, L the n x n kernel (Gram) matrices of the two
representations and H = I - 11^T/n the centring matrix,

    HSIC(K, L) = tr(K H L H) / (n - 1)^2
    CKA(K, L)  = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

CKA is a unitless similarity: 1 for representations that are the same up to
an orthogonal transform, isotropic scaling and translation, near 0 for
unrelated ones. It is *not* invariant to general invertible linear maps, so
it sees changes that a linear probe cannot.

The biased estimator is inflated for small n relative to the dimensions
(independent random features score well above 0); ``debiased=True`` uses the
unbiased HSIC of Song et al. (JMLR 2012) in all three terms, which centres
near 0 for independent representations and can come out slightly negative.
For N too large for one pass, :class:`MinibatchCKA` averages the unbiased HSIC
over minibatches (Nguyen, Raghu, Kornblith, ICLR 2021).

Conventions:

* a constant representation (every row the same, e.g. a dead layer) has
  HSIC(K, K) = 0; CKA is then *defined* as 0.0 rather than NaN, and likewise
  when a debiased self-HSIC comes out <= 0 at very small n;
* constant feature columns are harmless (they vanish after centring);
* the RBF kernel is exactly that of the paper's reference ``gram_rbf``: the
  scale is the median of all n^2 squared distances, zero diagonal included
  (see :func:`cka`; MMD's median heuristic in :mod:`probes.gap` differs);
* everything is accumulated in float64, whatever the input dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from probes._hsic import (
    center_columns,
    gram_linear_np,
    gram_rbf_np,
    hsic_gram,
    hsic_linear_features,
    ratio,
)
from probes._validation import as_features, check_choice

__all__ = ["MinibatchCKA", "cka", "gram_linear", "gram_rbf", "hsic"]

_KERNELS = ("linear", "rbf")


def _check_pair(x: np.ndarray, y: np.ndarray, name_x: str = "x", name_y: str = "y") -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"'{name_x}' and '{name_y}' must have the same number of rows (the same examples "
            f"in both representations). Got {name_x} with shape {tuple(x.shape)} and "
            f"{name_y} with shape {tuple(y.shape)}."
        )


def _check_n(n: int, debiased: bool, owner: str) -> None:
    if debiased and n < 4:
        raise ValueError(
            f"Debiased {owner} needs at least 4 samples (the unbiased HSIC estimator divides "
            f"by n(n-3)). Got {n}."
        )
    if n < 2:
        raise ValueError(f"{owner} needs at least 2 samples. Got {n}.")


def _check_bool(value: Any, name: str, owner: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"The '{name}' parameter of {owner} must be a bool. Got {value!r} instead.")
    return bool(value)


def _check_threshold(threshold: Any, owner: str) -> float:
    ok = isinstance(threshold, (int, float, np.integer, np.floating)) and not isinstance(
        threshold, bool
    )
    if not ok or not math.isfinite(threshold) or threshold <= 0:
        raise ValueError(
            f"The 'threshold' parameter of {owner} must be a positive finite number "
            "(t in the RBF kernel exp(-D_ij / (2 t^2 m)), m the median squared distance). "
            f"Got {threshold!r} instead."
        )
    return float(threshold)


def _unit_scale(xc: np.ndarray) -> np.ndarray:
    # CKA is scale-invariant; working at unit Frobenius norm keeps the fourth
    # powers in ||X^T X||_F^2 far from float64 overflow and underflow.
    norm = float(np.linalg.norm(xc))
    return xc / norm if norm > 0 else xc


def _linear_cka_features(xc: np.ndarray, yc: np.ndarray, debiased: bool) -> float:
    """Linear CKA in feature space, from p x p, q x q and p x q products (centred inputs)."""
    return ratio(*hsic_linear_features(xc, yc, debiased))


def _gram_cka(gram_x: np.ndarray, gram_y: np.ndarray, debiased: bool) -> float:
    """CKA from two n x n Gram matrices."""
    xy = hsic_gram(gram_x, gram_y, debiased)
    xx = hsic_gram(gram_x, gram_x, debiased)
    yy = hsic_gram(gram_y, gram_y, debiased)
    return ratio(xy, xx, yy)


def cka(
    x: Any,
    y: Any,
    kernel: str = "linear",
    debiased: bool = False,
    threshold: float = 1.0,
) -> float:
    """Centered Kernel Alignment between two representations of the same n examples.

    Args:
        x: (n, p) features, numpy array or torch tensor (a 1-D input is one feature).
        y: (n, q) features of the *same* examples, in the same row order.
        kernel: ``"linear"`` (K = X X^T) or ``"rbf"``
            (K_ij = exp(-D_ij / (2 t^2 m)), see below).
        debiased: use the unbiased HSIC estimator of Song et al. (2012); needs
            n >= 4. Recommended when n is not much larger than p and q.
        threshold: RBF only: t in the kernel below.

    Returns:
        A unitless similarity, in [0, 1] for the biased estimator (1 = identical
        up to rotation, isotropic scaling and translation); the debiased one
        can be slightly negative. 0.0 when either representation is constant.

    Linear kernel: when p < n and q < n the feature-space form
    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` is used, and the debiased
    terms are likewise rewritten with X^T X-type products (``probes._hsic``),
    so memory is O((p + q)^2) and no n x n matrix is formed; otherwise (wide
    features) the n x n Gram form is cheaper and is used. RBF always uses the
    Gram form (O(n^2) memory).

    RBF kernel convention: exactly that of Kornblith et al.'s reference code
    (``gram_rbf``), so numbers can be checked against it:
    ``K_ij = exp(-D_ij / (2 t^2 m))`` with ``D_ij = ||x_i - x_j||^2``,
    ``t = threshold`` and ``m`` the median of *all n^2 entries* of D, the zero
    diagonal included (a median of squared distances, computed separately for
    x and for y). This is not MMD's median heuristic (:func:`probes.gap.mmd2`
    takes the median distance over the distinct pairs i != j). If more than half
    of D is 0 (duplicated rows) m is the median of the non-zero entries, and if
    all rows coincide the kernel is the constant 1 (CKA 0.0, as above).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(100, 8))
        >>> round(cka(x, 3.0 * x + 1.0), 6)
        1.0
    """
    check_choice(kernel, "kernel", "cka", _KERNELS)
    debiased = _check_bool(debiased, "debiased", "cka")
    if kernel == "rbf":
        threshold = _check_threshold(threshold, "cka")
    xa = as_features(x, "x")
    ya = as_features(y, "y")
    _check_pair(xa, ya)
    n = xa.shape[0]
    _check_n(n, debiased, "CKA")
    xc = center_columns(xa)
    yc = center_columns(ya)
    if kernel == "rbf":
        return _gram_cka(gram_rbf_np(xc, threshold), gram_rbf_np(yc, threshold), debiased)
    xc = _unit_scale(xc)
    yc = _unit_scale(yc)
    if xc.shape[1] < n and yc.shape[1] < n:
        return _linear_cka_features(xc, yc, debiased)
    return _gram_cka(gram_linear_np(xc), gram_linear_np(yc), debiased)


def gram_linear(x: Any) -> np.ndarray:
    """Linear-kernel Gram matrix ``X X^T`` (n x n, float64) of the rows of ``x``.

    Example:
        >>> gram_linear(np.array([[1.0, 0.0], [0.0, 2.0]]))
        array([[1., 0.],
               [0., 4.]])
    """
    xa = as_features(x, "x")
    return gram_linear_np(xa)


def gram_rbf(x: Any, threshold: float = 1.0) -> np.ndarray:
    """RBF Gram matrix ``exp(-D_ij / (2 t^2 m))`` (n x n, float64, entries in (0, 1]).

    As in Kornblith et al.'s reference ``gram_rbf``: ``D_ij = ||x_i - x_j||^2``,
    t = ``threshold``, m = the median of all n^2 entries of D (zero diagonal
    included). If more than half of D is 0 (median 0) the median of the
    non-zero entries is used; if all rows coincide the result is all ones.

    Example:
        >>> # D = [[0, 1, 9], [1, 0, 4], [9, 4, 0]]: median of the 9 entries is 1
        >>> k = gram_rbf(np.array([[0.0], [1.0], [3.0]]))
        >>> round(float(k[0, 1]), 6) == round(float(np.exp(-1 / 2)), 6)
        True
    """
    threshold = _check_threshold(threshold, "gram_rbf")
    xa = as_features(x, "x")
    return gram_rbf_np(center_columns(xa), threshold)


def hsic(gram_x: Any, gram_y: Any, debiased: bool = False) -> float:
    """Hilbert-Schmidt Independence Criterion of two n x n Gram matrices.

    Biased: ``tr(K H L H) / (n - 1)^2``. Debiased (Song et al. 2012, n >= 4):
    zero the diagonals to get K~, L~, then
    ``[tr(K~L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2 1^T K~ L~ 1 / (n-2)] / (n(n-3))``.
    Units are those of the product of the two kernels; 0 means no dependence
    that the kernels can see (the debiased estimate may be slightly negative).

    Example:
        >>> x = np.arange(5.0)[:, None]
        >>> round(hsic(gram_linear(x), gram_linear(x)), 6)  # (sum (x - mean)^2)^2 / (n-1)^2
        6.25
    """
    debiased = _check_bool(debiased, "debiased", "hsic")
    k = as_features(gram_x, "gram_x")
    ell = as_features(gram_y, "gram_y")
    for arr, name in ((k, "gram_x"), (ell, "gram_y")):
        if arr.shape[0] != arr.shape[1]:
            raise ValueError(
                f"The '{name}' parameter must be a square (n, n) Gram matrix. "
                f"Got shape {tuple(arr.shape)} instead."
            )
    if k.shape != ell.shape:
        raise ValueError(
            "'gram_x' and 'gram_y' must be Gram matrices of the same n examples. "
            f"Got shapes {tuple(k.shape)} and {tuple(ell.shape)}."
        )
    _check_n(k.shape[0], debiased, "HSIC")
    return hsic_gram(k, ell, debiased)


class MinibatchCKA:
    """Streaming linear CKA over minibatches (Nguyen, Raghu, Kornblith, ICLR 2021).

    Each :meth:`update` receives a minibatch of the same examples seen through
    both representations and adds the unbiased (Song et al.) HSIC of the pairs
    (K, L), (K, K), (L, L) on that minibatch to float64 running sums;
    :meth:`compute` returns ``mean HSIC(K,L) / sqrt(mean HSIC(K,K) mean HSIC(L,L))``.
    Memory is O((p + q)^2) per batch, independent of the total N. With one
    batch this is exactly ``cka(x, y, debiased=True)``; with many it estimates
    the same population quantity (the unbiased terms average without bias, so
    there is no small-batch inflation; batches must still hold >= 4 examples).

    Attributes:
        n_batches: number of minibatches accumulated since the last reset.
        n_samples: number of examples accumulated since the last reset.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(400, 6))
        >>> metric = MinibatchCKA()
        >>> for i in range(0, 400, 100):
        ...     metric.update(x[i:i + 100], 2.0 * x[i:i + 100])
        >>> round(metric.compute(), 6), metric.n_batches, metric.n_samples
        (1.0, 4, 400)
    """

    def __init__(self, kernel: str = "linear") -> None:
        check_choice(kernel, "kernel", "MinibatchCKA", ("linear",))
        self.kernel = kernel
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated minibatch (feature dimensions may change after this)."""
        self._sum_xy = 0.0
        self._sum_xx = 0.0
        self._sum_yy = 0.0
        self._dims: tuple[int, int] | None = None
        self.n_batches = 0
        self.n_samples = 0

    def update(self, x: Any, y: Any) -> None:
        """Add one minibatch: ``x`` (b, p) and ``y`` (b, q), the same b >= 4 examples."""
        xa = as_features(x, "x")
        ya = as_features(y, "y")
        _check_pair(xa, ya)
        b = xa.shape[0]
        if b < 4:
            raise ValueError(
                "MinibatchCKA.update needs at least 4 examples per minibatch (the unbiased "
                f"HSIC estimator divides by b(b-3)). Got {b}."
            )
        dims = (xa.shape[1], ya.shape[1])
        if self._dims is not None and dims != self._dims:
            raise ValueError(
                "MinibatchCKA.update got feature dimensions (x: "
                f"{dims[0]}, y: {dims[1]}) that differ from the earlier minibatches "
                f"(x: {self._dims[0]}, y: {self._dims[1]}); call reset() to start a new "
                "comparison."
            )
        # The unbiased estimator is translation invariant, so centring each
        # batch changes nothing but the rounding (for the better).
        xc = center_columns(xa)
        yc = center_columns(ya)
        if dims[0] < b and dims[1] < b:
            xy, xx, yy = hsic_linear_features(xc, yc, debiased=True)
        else:
            gx = gram_linear_np(xc)
            gy = gram_linear_np(yc)
            xy = hsic_gram(gx, gy, True)
            xx = hsic_gram(gx, gx, True)
            yy = hsic_gram(gy, gy, True)
        self._dims = dims
        self._sum_xy += xy
        self._sum_xx += xx
        self._sum_yy += yy
        self.n_batches += 1
        self.n_samples += b

    def compute(self) -> float:
        """The minibatch CKA of everything accumulated so far (0.0 if a side is constant)."""
        if self.n_batches == 0:
            raise ValueError(
                "MinibatchCKA.compute was called before any update(); add at least one "
                "minibatch first."
            )
        m = float(self.n_batches)
        return ratio(self._sum_xy / m, self._sum_xx / m, self._sum_yy / m)

    def __repr__(self) -> str:
        return (
            f"MinibatchCKA(kernel={self.kernel!r}, n_batches={self.n_batches}, "
            f"n_samples={self.n_samples})"
        )
