"""The numerical core of :func:`probes.linear.linear_probe` (private).

On the solve-ready features of :mod:`probes._design` (standardised, rotated
where that pays), solve every cross-validation fold and the full training split
together along the regularisation path, with scipy's L-BFGS-B
(:func:`probes._solver.minimize_stacked`). In the design's basis the feature
columns are uncorrelated with variances ``e_j``, and ``1 / (c e_j + l2)`` is a
good diagonal inverse-Hessian estimate: the solver's change of variables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from probes._design import Design, prepare
from probes._solver import SolveInfo, minimize_stacked

__all__ = [
    "Path",
    "Warm",
    "cv_path",
    "fit_fixed",
    "fold_ids",
    "geometric_middle",
    "predict",
    "solve_preconditioned",
]

# Softmax curvature scale against l2 in the preconditioner 1 / (c e + l2);
# 0.05 took the fewest iterations over d = 16..512 and 2..10 classes.
_CURV = 0.05
# Walk the path this many strengths past the best CV accuracy, then stop: CV
# accuracy along an L2 path is unimodal in practice, and the weak end, where
# L-BFGS needs the most iterations, is rarely the best.
_PATIENCE = 2
# Largest problems x rows x classes for which an objective keeps its last
# log-probabilities (4 MiB in float32).
_KEEP_LAST = 1 << 20


def fold_ids(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id (0..k-1) per row from scikit-learn's shuffled ``StratifiedKFold``: the
    row is in the validation part of fold ``fold_ids[row]``."""
    fold = np.empty(len(y), dtype=np.int64)
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for j, (_, val) in enumerate(cv.split(np.zeros(len(y)), y)):
        fold[val] = j
    return fold


def _row_weights(fold, k, n, device, dtype) -> torch.Tensor:
    """Weights (B, n): problem ``j < k`` trains on the rows with ``fold != j``
    (each weighted 1 / its row count), the last one on every row."""
    member = np.ones((k + 1, n), dtype=bool)
    if k:
        member[:k] = fold[None, :] != np.arange(k)[:, None]
    return torch.as_tensor(member / member.sum(axis=1, keepdims=True), dtype=dtype, device=device)


def _rows(design: Design, labels: torch.Tensor, weights: torch.Tensor) -> tuple[list, bool]:
    """What every objective on these rows reuses, whatever its strength: per row block,
    its weights (0 leaves a row out of a problem) and label index; and whether
    evaluations keep their log-probabilities (see below)."""
    nb = weights.shape[0]
    parts = []
    for a, b in design.bounds:
        parts.append((weights[:, None, a:b], labels[None, None, a:b].expand(nb, 1, b - a)))
    # The last evaluation's log-probabilities, per block, are kept while they are small
    # and the design is held in memory anyway (a streamed one is streamed to hold
    # little): the fold accuracies at a solve's end need the same products.
    keep_last = design.blocks is not None and nb * design.n * (int(labels.max()) + 1) <= _KEEP_LAST
    return parts, keep_last


def _objective(
    design: Design,
    labels: torch.Tensor,
    weights: torch.Tensor,
    lam: float,
    rows: tuple[list, bool] | None = None,
):
    """``fun(z)`` for :func:`minimize_stacked`: per problem ``b``, the mean
    cross-entropy over its rows plus ``lam/2 ||Z||^2`` (intercept unpenalised),
    in float64, and its gradient. Classes sit before rows so the softmax
    reduces over a leading axis, which torch vectorises along the contiguous
    rows. ``rows`` is :func:`_rows` of the same arguments, when the caller has it."""
    lam_pen = lam * design.pen
    nb = weights.shape[0]
    parts, keep_last = _rows(design, labels, weights) if rows is None else rows

    def fun(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, p = z.shape[1], z.shape[2]
        flat = z.reshape(nb * k, p)
        grad = (z * lam_pen).view(nb * k, p)
        # lam/2 ||Z||^2, in float64 like every sum over rows below.
        loss = 0.5 * (grad.view(nb, k, p) * z).sum(dim=(1, 2), dtype=torch.float64)
        blocks = []
        for (a, b, f, f_t), (w, idx) in zip(design.iter_blocks(), parts):
            logp = torch.log_softmax((flat @ f_t).view(nb, k, b - a), dim=1)
            if keep_last:
                blocks.append(logp)
            # The mean cross-entropy must resolve changes near 1e-7: summed in float64.
            loss -= (w * logp.gather(1, idx)).sum(dim=(1, 2), dtype=torch.float64)
            dlogits = logp.exp().mul_(w).scatter_add_(1, idx, -w)  # w (p - onehot)
            grad = torch.addmm(grad, dlogits.view(nb * k, b - a), f)
        fun.last = (z, blocks) if keep_last else None
        return loss, grad.view(nb, k, p)

    fun.last = None
    return fun


def _fold_hits(design: Design, z: torch.Tensor, labels: torch.Tensor, val: torch.Tensor, fun):
    """Correct validation predictions per fold (k,) at the fold solutions ``z[:k]``.

    Where ``fun`` (an :func:`_objective`) was last evaluated at this very ``z``, its
    log-probabilities serve (their argmax is the logits' argmax): no product again.
    """
    hits = None
    k = val.shape[0]
    if fun.last is not None and fun.last[0] is z:
        blocks = ((a, b, lp[:k]) for (a, b), lp in zip(design.bounds, fun.last[1]))
    else:
        blocks = design.block_logits(z[:k])
    for a, b, logits in blocks:
        # max(dim=1).indices: argmax over the class axis (first of ties); on this
        # strided layout it reads memory in order where argmax(dim=1) does not.
        hit = (logits.max(dim=1).indices == labels[None, a:b]) & val[:, a:b]
        part = hit.sum(dim=1)
        hits = part if hits is None else hits + part
    return hits


def solve_preconditioned(
    design: Design, fun, lam: float, z: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, SolveInfo]:
    """:func:`minimize_stacked` on ``fun`` from ``z``, preconditioned by
    ``1 / (c e_j + lam pen_j)``: ``lam pen`` is the Hessian of ``fun``'s penalty (for an
    :func:`_objective` at strength ``lam``, that ``lam``)."""
    pre = 1.0 / (_CURV * design.evals + lam * design.pen)
    return minimize_stacked(fun, pre, z, **kwargs)


@dataclass
class Warm:
    """Where a solve of the full split stopped, to go on from there: its strength and
    solution (1, K, r+1)."""

    lam: float
    z: torch.Tensor


@dataclass
class Path:
    """What :func:`cv_path` found. ``scores``: mean validation accuracy over the folds
    per visited strength (empty without folds); ``fulls``: the full-split solution
    (K, r+1) per visited strength; ``iters``: L-BFGS iterations per strength;
    ``converged``: whether every problem of that strength's solve converged;
    ``warm``: the full split's :class:`Warm` at the best-scoring strength, from which
    a tighter solve there goes on (``None`` without folds: nothing chose a strength)."""

    scores: list[float]
    fulls: list[torch.Tensor]
    iters: list[int]
    warm: Warm | None
    converged: list[bool] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


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
    warm: Warm | None = None,
) -> Path:
    """Walk ``grid`` (strong to weak) solving the ``k`` folds and the full split
    as one stacked problem, each strength warm-started from the previous one's
    solutions.

    Returns a :class:`Path`. The walk stops ``_PATIENCE`` strengths after the
    best CV accuracy so far, or at once when that is perfect (no weaker
    strength can then be chosen: ties go to the stronger). ``warm`` (a
    :class:`Path`'s, for ``k == 0``) replaces the all-zero start.
    """
    dev, dt = design.device, design.dtype
    weights = _row_weights(fold, k, design.n, dev, dt)
    labels = torch.as_tensor(y_idx, device=dev)
    if k:
        val = torch.as_tensor(fold[None, :] == np.arange(k)[:, None], device=dev)
        n_val = val.sum(dim=1).double()
    if warm is not None and k:
        raise ValueError("cv_path: a warm start serves the full split alone (k == 0)")
    z = (
        torch.zeros(k + 1, n_classes, design.width, dtype=dt, device=dev)
        if warm is None
        else warm.z.to(dt).clone()
    )
    path = Path([], [], [], None)
    rows = _rows(design, labels, weights)
    for lam in grid:
        fun = _objective(design, labels, weights, lam, rows)
        z, info = solve_preconditioned(design, fun, lam, z, max_iter=max_iter, tol=tol, ftol=ftol)
        path.fulls.append(z[k])
        path.iters.append(info.n_iter)
        path.converged.append(bool(info.converged.all()))
        path.messages.append(info.message)
        if not k:
            continue
        hits = _fold_hits(design, z, labels, val, fun)
        scores = path.scores
        scores.append(float((hits.double() / n_val).mean()))
        if scores[-1] > max(scores[:-1], default=-1.0):
            path.warm = Warm(lam, z[k : k + 1].clone())
        if scores[-1] == 1.0:
            break
        if len(scores) > _PATIENCE and max(scores[-_PATIENCE:]) < max(scores):
            break
    return path


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
    design = prepare(x, device, dtype, stream=False)
    path = cv_path(design, y, n_classes, None, 0, [float(l2)], max_iter=max_iter, tol=tol, ftol=0.0)
    z = path.fulls[0].double().cpu().numpy()  # (K, r+1)
    basis = np.eye(x.shape[1]) if design.basis is None else design.basis
    return basis @ z[:, :-1].T, z[:, -1].copy()


def geometric_middle(grid: Sequence[float]) -> float:
    """The strength used when cross-validation is impossible."""
    return float(math.exp(np.mean(np.log(np.asarray(grid, dtype=np.float64)))))
