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

Rows are processed in fixed blocks of about ``_BLOCK_ELEMS`` values, the same
blocks whether the solve-ready features are kept in memory or, for a
``numpy.memmap`` or another lazily read array (``stream=True``), rebuilt from
the raw rows at every evaluation; the two give bit-identical results, and the
streamed one never holds more than one block of ``x`` in memory. The mean,
standard deviation and covariance are accumulated block by block in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from probes._lbfgs import multinomial_lbfgs

__all__ = [
    "Design",
    "cv_path",
    "fit_fixed",
    "geometric_middle",
    "limit_threads",
    "predict",
    "prepare",
    "row_blocks",
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
# Values of x per row block (at least _BLOCK_ROWS rows): a float64 block is
# 2 MiB, far under any X worth streaming, and large enough that the per-block
# overhead (a few tensor ops) stays a few percent of the block's products.
_BLOCK_ELEMS = 1 << 18
_BLOCK_ROWS = 64


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


def row_blocks(n: int, d: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` row blocks every pass over an (n, d) array uses."""
    step = max(_BLOCK_ROWS, _BLOCK_ELEMS // max(1, d))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _rows64(x: Any, a: int, b: int) -> np.ndarray:
    """Rows ``a:b`` as a float64 array the caller may modify in place."""
    return np.array(x[a:b], dtype=np.float64)  # always a copy: never write into x


@dataclass
class Design:
    """Solve-ready features (standardised, maybe rotated, with a trailing
    intercept column) of the training split, served in row blocks.

    ``evals`` (r+1,) column variances (1 for the intercept), ``pen`` (r+1,) 1
    for features and 0 for the intercept, ``basis`` (d, r) float64 numpy
    mapping solve coordinates back to the standardised features (``None``:
    the identity), and the standardisation ``mean`` / ``scale``. ``blocks``
    holds ``(f, f.T contiguous)`` per block when kept in memory; ``None`` when
    streamed from ``source``.
    """

    source: Any
    bounds: list[tuple[int, int]]
    blocks: list[tuple[torch.Tensor, torch.Tensor]] | None
    evals: torch.Tensor
    pen: torch.Tensor
    basis: np.ndarray | None
    mean: np.ndarray
    scale: np.ndarray
    device: torch.device
    dtype: torch.dtype

    @property
    def n(self) -> int:
        return self.bounds[-1][1]

    @property
    def width(self) -> int:
        return len(self.pen)

    def transform(self, x: Any, a: int, b: int) -> torch.Tensor:
        """Rows ``a:b`` of raw features ``x`` in solve coordinates (b-a, r+1)."""
        xs = _rows64(x, a, b)
        xs -= self.mean  # in place: a block of x is the only float64 copy held
        xs /= self.scale
        xs = torch.as_tensor(xs, dtype=self.dtype)
        xs = xs.to(self.device)
        if self.basis is not None:
            xs = xs @ self._basis_t
        return torch.cat([xs, xs.new_ones(len(xs), 1)], dim=1)

    def __post_init__(self) -> None:
        if self.basis is not None:
            self._basis_t = torch.as_tensor(self.basis, dtype=self.dtype, device=self.device)

    def iter_blocks(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """``(start, stop, f, f.T)`` per row block of the training split."""
        for i, (a, b) in enumerate(self.bounds):
            if self.blocks is not None:
                yield a, b, *self.blocks[i]
            else:
                f = self.transform(self.source, a, b)
                yield a, b, f, f.T

    def logits(self, x: Any, z: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, logits (B, K, rows))`` per block of raw features ``x``."""
        b_, k, p = z.shape
        flat = z.reshape(b_ * k, p)
        for a, b in row_blocks(x.shape[0], self.mean.shape[0]):
            yield a, b, (flat @ self.transform(x, a, b).T).view(b_, k, b - a)


def _stats(x: Any, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, scale (the population standard deviation, 1 for a constant
    column) and the raw standard deviation per column; two passes in float64."""
    n = bounds[-1][1]
    total = sum(_rows64(x, a, b).sum(axis=0) for a, b in bounds)
    mean = total / n
    sq = sum((_sub_sq(_rows64(x, a, b), mean)).sum(axis=0) for a, b in bounds)
    std = np.sqrt(sq / n)
    # A constant column carries no information; scale 1 keeps it at 0 instead
    # of dividing by zero (relative test: a large constant has round-off spread).
    scale = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean, scale, std


def _sub_sq(rows: np.ndarray, mean: np.ndarray) -> np.ndarray:
    rows -= mean
    rows *= rows
    return rows


def _rotates(n: int, d: int, stream: bool) -> bool:
    """Whether the principal rotation pays for itself: the eigendecomposition
    costs about min(n, d)^3, the solve about n x d per step. It wins when
    ``d <= n / 4`` (cheap, and correlated columns slow L-BFGS down) and when
    ``d > 2 n`` (the solve shrinks from d to n columns; in memory only: its
    basis is as large as x)."""
    return 4 * d <= n or (d > 2 * n and not stream)


def prepare(x_train: Any, device: torch.device, dtype: torch.dtype, *, stream: bool) -> Design:
    """Standardise with the training split's statistics and, where it pays
    (:func:`_rotates`), rotate into the principal basis. ``x_train`` is any
    (n, d) array that slices into numpy rows; with ``stream`` its blocks are
    rebuilt at every pass instead of being kept."""
    n, d = x_train.shape
    bounds = row_blocks(n, d)
    mean, scale, raw_std = _stats(x_train, bounds)
    basis = None
    if not _rotates(n, d, stream):
        # Standardised coordinates: every column has variance 1 (0 if constant).
        evals = torch.as_tensor((raw_std / scale) ** 2)
    else:
        # torch, not numpy, for the products: its thread count is the one
        # limit_threads bounds (a multi-threaded BLAS on a busy CPU can be 100x slower).
        def std64(a: int, b: int) -> torch.Tensor:
            rows = _rows64(x_train, a, b)
            rows -= mean
            rows /= scale
            return torch.from_numpy(rows)

        if d <= n:
            cov = torch.zeros(d, d, dtype=torch.float64)
            for a, b in bounds:
                xs = std64(a, b)
                cov += xs.T @ xs
            evals, vecs = torch.linalg.eigh(cov / n)
        else:
            xs = std64(0, n)
            evals, u = torch.linalg.eigh(xs @ xs.T / n)
        # Directions with no variance (constant or duplicated columns, d > n)
        # only carry penalty: their optimal weight is exactly zero.
        keep = evals > 1e-9 * max(float(evals[-1]), np.finfo(np.float64).tiny)
        evals = evals[keep]
        basis_t = vecs[:, keep] if d <= n else xs.T @ (u[:, keep] / torch.sqrt(n * evals))
        basis = basis_t.numpy()
    evals = torch.cat([evals, evals.new_ones(1)]).to(dtype=dtype, device=device)
    pen = torch.ones(len(evals), dtype=dtype, device=device)
    pen[-1] = 0.0
    design = Design(x_train, bounds, None, evals, pen, basis, mean, scale, device, dtype)
    if not stream:
        design.blocks = [(f, f.T.contiguous()) for _, _, f, _ in design.iter_blocks()]
    return design


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


def _row_weights(fold, k, n, device, dtype) -> torch.Tensor:
    """Weights (B, n): problem ``j < k`` trains on the rows with ``fold != j``
    (each weighted 1 / its row count), the last one on every row."""
    member = np.ones((k + 1, n), dtype=bool)
    if k:
        member[:k] = fold[None, :] != np.arange(k)[:, None]
    return torch.as_tensor(member / member.sum(axis=1, keepdims=True), dtype=dtype, device=device)


def _objective(design: Design, labels: torch.Tensor, weights: torch.Tensor, lam: float):
    """``fun(z)`` for :func:`multinomial_lbfgs`: per problem ``b``, the mean
    cross-entropy over its rows plus ``lam/2 ||Z||^2`` (intercept unpenalised),
    in float64, and its gradient. Classes sit before rows so the softmax
    reduces over a leading axis, which torch vectorises along the contiguous
    rows (about 20x faster than a softmax over a last axis of 10)."""
    pen = design.pen

    def fun(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nb, k, p = z.shape
        flat = z.reshape(nb * k, p)
        loss = None
        grad = lam * (z * pen)
        for a, b, f, f_t in design.iter_blocks():
            logits = (flat @ f_t).view(nb, k, b - a)
            logp = torch.log_softmax(logits, dim=1)
            w = weights[:, None, a:b]
            idx = labels[None, None, a:b].expand(nb, 1, b - a)
            # Row sums in the working dtype (pairwise summation), the rest in
            # float64: the mean cross-entropy must resolve changes near 1e-7.
            part = -(w * logp.gather(1, idx)).sum(dim=(1, 2)).double()
            loss = part if loss is None else loss + part
            dlogits = torch.exp(logp).mul_(w).scatter_add_(1, idx, -w)
            grad = grad + (dlogits.view(nb * k, b - a) @ f).view(nb, k, p)
        loss = loss + (0.5 * lam) * (z * pen * z).sum(dim=(1, 2)).double()
        return loss, grad

    return fun


def _fold_hits(design: Design, z: torch.Tensor, labels: torch.Tensor, val: torch.Tensor):
    """Correct validation predictions per fold (k,) at the fold solutions ``z[:k]``."""
    nk, n_classes, width = val.shape[0], z.shape[1], z.shape[2]
    flat = z[:nk].reshape(nk * n_classes, width)
    hits = None
    # The kept (or rebuilt) solve-ready blocks: re-standardising the raw rows
    # at every strength cost a copy of x per step of the path.
    for a, b, f, _ in design.iter_blocks():
        logits = (flat @ f.T).view(nk, n_classes, b - a)
        # max(dim=1).indices: argmax over the class axis (first of ties),
        # about 20x faster than argmax(dim=1) on this layout.
        hit = (logits.max(dim=1).indices == labels[None, a:b]) & val[:, a:b]
        part = hit.sum(dim=1)
        hits = part if hits is None else hits + part
    return hits


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
    strengths after the best CV accuracy so far, or at once when that is
    perfect (no weaker strength can then be chosen: ties go to the stronger).
    ``start`` (k+1, K, r+1) replaces the all-zero starting point.
    """
    dev, dt = design.device, design.dtype
    weights = _row_weights(fold, k, design.n, dev, dt)
    labels = torch.as_tensor(y_idx, device=dev)
    if k:
        val = torch.as_tensor(fold[None, :] == np.arange(k)[:, None], device=dev)
        n_val = val.sum(dim=1).double()
    z = torch.zeros(k + 1, n_classes, design.width, dtype=dt, device=dev)
    if start is not None:
        z = start.to(dt).reshape(z.shape).clone()
    scores: list[float] = []
    fulls: list[torch.Tensor] = []
    iters: list[int] = []
    gamma = None
    for lam in grid:
        pre = 1.0 / (_CURV * design.evals + lam * design.pen)
        z, info = multinomial_lbfgs(
            _objective(design, labels, weights, lam),
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
            scores.append(float((_fold_hits(design, z, labels, val).double() / n_val).mean()))
            if scores[-1] == 1.0:
                break
            if len(scores) > _PATIENCE and max(scores[-_PATIENCE:]) < max(scores):
                break
    return scores, fulls, iters


def predict(design: Design, x: Any, z: torch.Tensor) -> np.ndarray:
    """Class index (0..K-1) per row of raw features ``x`` under the solution ``z`` (K, r+1)."""
    out = [lg[0].max(dim=0).indices.cpu().numpy() for _, _, lg in design.logits(x, z[None])]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


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
        design = prepare(x, device, dtype, stream=False)
        _, fulls, _ = cv_path(
            design, y, n_classes, None, 0, [float(l2)], max_iter=max_iter, tol=tol, ftol=0.0
        )
    z = fulls[0].double().cpu().numpy()  # (K, r+1)
    basis = np.eye(x.shape[1]) if design.basis is None else design.basis
    return basis @ z[:, :-1].T, z[:, -1].copy()


def geometric_middle(grid: Sequence[float]) -> float:
    """The strength used when cross-validation is impossible."""
    return float(math.exp(np.mean(np.log(np.asarray(grid, dtype=np.float64)))))
