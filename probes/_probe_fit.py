"""The numerical core of :func:`probes.linear.linear_probe` (private).

Standardise on the training split, rotate into the principal basis of the
standardised training features where that pays (:func:`_rotates`), and solve
every cross-validation fold and the full training split together along the
regularisation path.

The rotation is an orthogonal change of variables ``W = V Z``: logits
``X W = (X V) Z`` and penalty ``||W||^2 = ||Z||^2`` are unchanged, so it is the
same problem. For ``d > n`` the optimum lies in the row space of the training
rows (every fold's rows are a subset), so keeping only those ``r <= n``
directions is exact. In this basis the feature columns are uncorrelated with
variances ``e_j``, and ``1 / (c e_j + l2)`` is a good diagonal inverse-Hessian
seed for L-BFGS.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from probes._lbfgs import multinomial_lbfgs

__all__ = [
    "Design",
    "cv_path",
    "fit_fixed",
    "geometric_middle",
    "limit_threads",
    "prepare",
    "stratified_folds",
]

# Softmax curvature scale against l2 in the preconditioner 1 / (c e + l2);
# 0.05 took the fewest iterations over d = 16..512 and 2..10 classes.
_CURV = 0.05
# Walk the path this many strengths past the best CV accuracy, then stop: CV
# accuracy along an L2 path is unimodal in practice, and the weak end, where
# L-BFGS needs the most iterations, is rarely the best.
_PATIENCE = 2
_HISTORY = 8  # L-BFGS curvature pairs kept
# Below this many multiply-adds per feature product, extra threads cost more in
# synchronisation than they save (and on a busy CPU far more).
_WORK_PER_THREAD = 5e7


@contextmanager
def limit_threads(work: float, device: torch.device) -> Iterator[None]:
    """Run with at most ``work / _WORK_PER_THREAD`` torch CPU threads (at least
    one); the caller's setting is restored on exit and is never raised."""
    before = torch.get_num_threads()
    want = max(1, min(before, int(work // _WORK_PER_THREAD)))
    if device.type != "cpu" or want >= before:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Design:
    """Solve-ready features with a trailing intercept column, on the solve device.

    ``train`` (n, r+1), ``test`` (m, r+1), ``evals`` (r+1,) column variances
    (1 for the intercept), ``pen`` (r+1,) 1 for features and 0 for the
    intercept, ``basis`` (d, r) float64 numpy mapping solve coordinates back to
    the standardised features (the identity when not rotated), and the
    standardisation.
    """

    train: torch.Tensor
    test: torch.Tensor
    evals: torch.Tensor
    pen: torch.Tensor
    basis: np.ndarray
    mean: np.ndarray
    scale: np.ndarray


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    # A constant column carries no information; scale 1 keeps it at 0 instead
    # of dividing by zero (relative test: a large constant has round-off spread).
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean, std


def _rotates(n: int, d: int) -> bool:
    """Whether the principal rotation pays for itself: the eigendecomposition
    costs about min(n, d)^3, the solve about n x d per step. It wins when
    ``d <= n / 4`` (cheap, and correlated columns slow L-BFGS down) and when
    ``d > 2 n`` (the solve shrinks from d to n columns)."""
    return 4 * d <= n or d > 2 * n


def prepare(
    x_train: np.ndarray, x_test: np.ndarray, device: torch.device, dtype: torch.dtype
) -> Design:
    """Standardise with the training split's statistics and, where it pays
    (:func:`_rotates`), rotate both splits into the principal basis."""
    mean, scale = _standardise(x_train)
    xs = torch.as_tensor((x_train - mean) / scale, dtype=dtype, device=device)
    xt = torch.as_tensor((x_test - mean) / scale, dtype=dtype, device=device)
    n, d = xs.shape
    if not _rotates(n, d):
        # Standardised coordinates: every column has variance 1 (0 if constant).
        basis, evals = None, (xs * xs).mean(dim=0)
    else:
        if d <= n:
            evals, vecs = torch.linalg.eigh(xs.T @ xs / n)
        else:
            evals, u = torch.linalg.eigh(xs @ xs.T / n)
        # Directions with no variance (constant or duplicated columns, d > n)
        # only carry penalty: their optimal weight is exactly zero.
        rel = 1e-9 if dtype == torch.float64 else 1e-6
        keep = evals > rel * evals[-1].clamp_min(torch.finfo(dtype).tiny)
        evals = evals[keep]
        basis = vecs[:, keep] if d <= n else xs.T @ (u[:, keep] / torch.sqrt(n * evals))
        xs, xt = xs @ basis, xt @ basis
    one = xs.new_ones
    evals = torch.cat([evals, one(1)])
    pen = one(len(evals))
    pen[-1] = 0.0
    return Design(
        train=torch.cat([xs, one(n, 1)], dim=1),
        test=torch.cat([xt, one(len(xt), 1)], dim=1),
        evals=evals,
        pen=pen,
        basis=np.eye(d) if basis is None else basis.double().cpu().numpy(),
        mean=mean,
        scale=scale,
    )


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id (0..k-1) per row: each class shuffled and dealt round-robin, so
    every fold holds each class's examples in proportion (within one)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = (start + np.arange(len(idx))) % k
        start += len(idx)
    return fold


def _row_weights(y_idx, fold, k, n_classes, device, dtype):
    """Weights (B, 1, n) and weighted one-hot labels (B, K, n): problem ``j < k``
    trains on the rows with ``fold != j``, the last one on every row."""
    n = len(y_idx)
    member = np.ones((k + 1, n), dtype=bool)
    if k:
        member[:k] = fold[None, :] != np.arange(k)[:, None]
    w = torch.as_tensor(member / member.sum(axis=1, keepdims=True), dtype=dtype, device=device)
    onehot = torch.zeros(n_classes, n, dtype=dtype, device=device)
    onehot[torch.as_tensor(y_idx, device=device), torch.arange(n, device=device)] = 1.0
    return w[:, None, :], w[:, None, :] * onehot[None]


def cv_path(
    design: Design,
    y_idx: np.ndarray,
    n_classes: int,
    fold: np.ndarray | None,
    k: int,
    grid: Sequence[float],
    *,
    max_iter: int,
    tol: float,
    ftol: float = 1e-9,
    start: torch.Tensor | None = None,
) -> tuple[list[float], list[torch.Tensor], list[int]]:
    """Walk ``grid`` (strong to weak) solving the ``k`` folds and the full split
    as one batch, each strength warm-started from the previous one.

    Returns the mean validation accuracy over folds per visited strength
    (empty when ``k == 0``), the full-split solution (K, r+1) per visited
    strength, and the iterations each took. The walk stops ``_PATIENCE``
    strengths after the best CV accuracy so far. ``start`` (k+1, K, r+1)
    replaces the all-zero starting point.
    """
    f_tr = design.train
    dev, dt = f_tr.device, f_tr.dtype
    w, oh = _row_weights(y_idx, fold, k, n_classes, dev, dt)
    f_t = f_tr.T.contiguous()
    labels = torch.as_tensor(y_idx, device=dev)
    if k:
        val = torch.as_tensor(fold[None, :] == np.arange(k)[:, None], device=dev)
        n_val = val.sum(dim=1).double()
    z = torch.zeros(k + 1, n_classes, f_tr.shape[1], dtype=dt, device=dev)
    if start is not None:
        z = start.to(dt).reshape(z.shape).clone()
    scores: list[float] = []
    fulls: list[torch.Tensor] = []
    iters: list[int] = []
    gamma = None
    for lam in grid:
        pre = 1.0 / (_CURV * design.evals + lam * design.pen)
        z, logits, info = multinomial_lbfgs(
            f_tr,
            f_t,
            oh,
            w,
            lam,
            design.pen,
            pre,
            z,
            max_iter=max_iter,
            tol=tol,
            ftol=ftol,
            history=_HISTORY,
            gamma0=gamma,
        )
        gamma = info.gamma
        fulls.append(z[k])
        iters.append(info.n_iter)
        if k:
            # max(dim=1).indices: argmax over the class axis (first of ties),
            # about 20x faster than argmax(dim=1) on this layout.
            hit = (logits[:k].max(dim=1).indices == labels[None, :]) & val
            scores.append(float((hit.sum(dim=1).double() / n_val).mean()))
            if len(scores) > _PATIENCE and max(scores[-_PATIENCE:]) < max(scores):
                break
    return scores, fulls, iters


def fit_fixed(
    x: np.ndarray,
    y: np.ndarray,
    l2: float,
    *,
    dtype: torch.dtype = torch.float64,
    max_iter: int = 1000,
    tol: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit at one fixed strength on all of ``x``; for tests and diagnostics.

    ``x`` (n, d) float, ``y`` int64 in 0..K-1 with every class present. Returns
    ``coef`` (d, K) and ``intercept`` (K,) for the features standardised with
    ``x``'s mean and population standard deviation (what scikit-learn's
    ``StandardScaler`` does), i.e. logits = ((x - mean) / std) @ coef + intercept.
    """
    device = torch.device("cpu")
    n_classes = int(y.max()) + 1
    with limit_threads(x.shape[0] * min(x.shape) * n_classes, device):
        design = prepare(x, x[:1], device, dtype)
        _, fulls, _ = cv_path(
            design, y, n_classes, None, 0, [float(l2)], max_iter=max_iter, tol=tol, ftol=0.0
        )
    z = fulls[0].double().cpu().numpy()  # (K, r+1)
    return design.basis @ z[:, :-1].T, z[:, -1].copy()


def geometric_middle(grid: Sequence[float]) -> float:
    """The strength used when cross-validation is impossible."""
    return float(math.exp(np.mean(np.log(np.asarray(grid, dtype=np.float64)))))
