"""The numerical core of :func:`probes.linear.linear_probe` (private).

On the solve-ready features of :mod:`probes._design` (standardised, rotated
where that pays), solve every cross-validation fold and the full training split
together along the regularisation path. In the design's basis the feature
columns are uncorrelated with variances ``e_j``, and ``1 / (c e_j + l2)`` is a
good diagonal inverse-Hessian seed for L-BFGS.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from probes._curvature import CurvaturePairs
from probes._design import Design, prepare
from probes._lbfgs import multinomial_lbfgs

__all__ = [
    "Path",
    "Warm",
    "cv_path",
    "fit_fixed",
    "geometric_middle",
    "limit_threads",
    "predict",
    "solve_preconditioned",
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
_LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x log2 e)
# Largest problems x rows x classes for which an objective keeps its last
# log-probabilities (4 MiB in float32).
_KEEP_LAST = 1 << 20
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


def _rows(design: Design, labels: torch.Tensor, weights: torch.Tensor) -> tuple[list, bool]:
    """What every objective on these rows reuses, whatever its strength: per row block,
    its weights' negation, label index and log2 weights (p w = exp2(log2(e) log p +
    log2 w) in one op; a row left out of a problem has weight 0, log2 -inf, and exp2
    gives it 0); and whether evaluations keep their log-probabilities (see below)."""
    nb = weights.shape[0]
    parts = []
    for a, b in design.bounds:
        w = weights[:, None, a:b]
        parts.append((-w, labels[None, None, a:b].expand(nb, 1, b - a), torch.log2(w)))
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
    """``fun(z)`` for :func:`multinomial_lbfgs`: per problem ``b``, the mean
    cross-entropy over its rows plus ``lam/2 ||Z||^2`` (intercept unpenalised),
    in float64, and its gradient. Classes sit before rows so the softmax
    reduces over a leading axis, which torch vectorises along the contiguous
    rows (about 20x faster than a softmax over a last axis of 10). ``rows`` is
    :func:`_rows` of the same arguments, when the caller has it already."""
    lam_pen = lam * design.pen
    nb = weights.shape[0]
    parts, keep_last = _rows(design, labels, weights) if rows is None else rows

    def fun(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, p = z.shape[1], z.shape[2]
        flat = z.reshape(nb * k, p)
        grad3 = z * lam_pen
        # lam/2 ||Z||^2 = 1/2 sum(z * lam z); in float64, like every sum over rows below.
        loss = (grad3 * z).sum(dim=(1, 2), dtype=torch.float64)
        grad = grad3.view(nb * k, p)
        blocks = []
        for i, ((a, b, f, f_t), (neg_w, idx, log2_w)) in enumerate(
            zip(design.iter_blocks(), parts)
        ):
            logp = torch.log_softmax((flat @ f_t).view(nb, k, b - a), dim=1)
            if keep_last:
                blocks.append(logp)
            # The mean cross-entropy must resolve changes near 1e-7: summed in float64.
            ce = (neg_w * logp.gather(1, idx)).sum(dim=(1, 2), dtype=torch.float64)
            loss = torch.add(ce, loss, alpha=0.5) if i == 0 else loss.add_(ce)
            # exp as exp2: torch's CPU exp of float32 runs 3-4x slower (22 against 6 us
            # for 32k values at AVX-512); the scaling moves p w by under 1e-6 relative.
            dlogits = torch.add(log2_w, logp, alpha=_LOG2E).exp2_().scatter_add_(1, idx, neg_w)
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
        # max(dim=1).indices: argmax over the class axis (first of ties),
        # about 20x faster than argmax(dim=1) on this layout.
        hit = (logits.max(dim=1).indices == labels[None, a:b]) & val[:, a:b]
        part = hit.sum(dim=1)
        hits = part if hits is None else hits + part
    return hits


def solve_preconditioned(design: Design, fun, lam: float, z: torch.Tensor, **kwargs):
    """:func:`multinomial_lbfgs` on ``fun`` from ``z``, preconditioned by
    ``1 / (c e_j + lam pen_j)``: ``lam pen`` is the Hessian of ``fun``'s penalty (for an
    :func:`_objective` at strength ``lam``, that ``lam``)."""
    pre = 1.0 / (_CURV * design.evals + lam * design.pen)
    return multinomial_lbfgs(fun, pre, z, history=_HISTORY, **kwargs)


def _at_strength(design: Design, z: torch.Tensor, info, lam_from: float, lam_to: float):
    """What a solve at ``lam_to`` from ``z`` reuses of ``info``, the solve at ``lam_from``
    that ended at ``z``: ``(loss, grad)`` there (the data term is the same), and the
    change of the objective's diagonal Hessian, ``(lam_to - lam_from) * pen``, which
    moves its curvature pairs (``None`` at the same strength)."""
    if lam_to == lam_from:
        return (info.loss, info.grad), None
    shift = (lam_to - lam_from) * design.pen
    dz = z * shift
    loss = info.loss + 0.5 * (dz * z).sum(dim=(1, 2), dtype=torch.float64)
    return (loss, info.grad + dz), shift


@dataclass
class Warm:
    """Where a solve of the full split stopped, to go on from there: its strength,
    solution (1, K, r+1), objective and gradient there, curvature pairs (a
    :meth:`CurvaturePairs.snapshot`) and inverse-Hessian scale."""

    lam: float
    z: torch.Tensor
    loss: torch.Tensor
    grad: torch.Tensor
    pairs: tuple
    gamma: torch.Tensor


@dataclass
class Path:
    """What :func:`cv_path` found. ``scores``: mean validation accuracy over the folds
    per visited strength (empty without folds); ``fulls``: the full-split solution
    (K, r+1) per visited strength; ``iters``: L-BFGS iterations per strength;
    ``warm``: the full split's :class:`Warm` at the best-scoring strength, from
    which a tighter solve there goes on (``None`` without folds: nothing chose a
    strength)."""

    scores: list[float]
    fulls: list[torch.Tensor]
    iters: list[int]
    warm: Warm | None


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
    as one batch, each strength warm-started from the previous one's solution,
    objective, inverse-Hessian scale and curvature pairs. The pairs move to the
    new strength exactly: the penalty is quadratic, so every pair's ``y`` moves
    by the change in strength times ``s``. The first step tried is the solution
    path extrapolated linearly in log(l2) through the last two solutions,
    where it lowers the objective. On resnet18 features (five layers, N=800)
    a probe of every layer took 201 objective evaluations this way, against
    235 warm-starting the solution alone and evaluating the extrapolation.

    Returns a :class:`Path`. The walk stops ``_PATIENCE`` strengths after the
    best CV accuracy so far, or at once when that is perfect (no weaker
    strength can then be chosen: ties go to the stronger). ``warm`` (a
    :class:`Path`'s, for ``k == 0``) replaces the all-zero start, with its
    objective, curvature pairs and scale, moved to ``grid[0]``.
    """
    dev, dt = design.device, design.dtype
    weights = _row_weights(fold, k, design.n, dev, dt)
    labels = torch.as_tensor(y_idx, device=dev)
    if k:
        val = torch.as_tensor(fold[None, :] == np.arange(k)[:, None], device=dev)
        n_val = val.sum(dim=1).double()
    z = torch.zeros(k + 1, n_classes, design.width, dtype=dt, device=dev)
    scores: list[float] = []
    fulls: list[torch.Tensor] = []
    iters: list[int] = []
    if warm is None:
        pairs, gamma = CurvaturePairs(k + 1, n_classes * design.width, _HISTORY, z), None
        info, lam_before = None, None
    else:
        if k:
            raise ValueError("cv_path: a warm start serves the full split alone (k == 0)")
        z = warm.z.to(dt).clone()
        pairs, gamma = CurvaturePairs.restore(warm.pairs), warm.gamma
        info, lam_before = warm, warm.lam
    best_warm = None
    rows = _rows(design, labels, weights)
    before: tuple[float, torch.Tensor] | None = None  # the strength before z's, its solution
    for i, lam in enumerate(grid):
        fun = _objective(design, labels, weights, lam, rows)
        initial, step, shift = None, None, None
        if info is not None:
            # The objective at the warm start z differs from the one the last solve ended
            # with only in its penalty: no pass over the rows.
            initial, shift = _at_strength(design, z, info, lam_before, lam)
        if before is not None:
            # The solution path extrapolated linearly in log(l2) from the last two
            # solutions: the solver's first step, where it points downhill.
            step = math.log(lam / grid[i - 1]) / math.log(grid[i - 1] / before[0])
            step = step * (z - before[1])
        if i:
            before = (grid[i - 1], z)  # z: the solution at grid[i - 1]
        z, info = solve_preconditioned(
            design,
            fun,
            lam,
            z,
            max_iter=max_iter,
            tol=tol,
            ftol=ftol,
            gamma0=gamma,
            initial=initial,
            pairs=pairs,
            shift=shift,
            first_step=step,
        )
        gamma, lam_before = info.gamma, lam
        fulls.append(z[k])
        iters.append(info.n_iter)
        if not k:
            continue
        hits = _fold_hits(design, z, labels, val, fun)
        scores.append(float((hits.double() / n_val).mean()))
        if scores[-1] > max(scores[:-1], default=-1.0):
            best_warm = _warm(lam, z, info, pairs, k)
        if scores[-1] == 1.0:
            break
        if len(scores) > _PATIENCE and max(scores[-_PATIENCE:]) < max(scores):
            break
    return Path(scores, fulls, iters, best_warm)


def _warm(lam: float, z: torch.Tensor, info, pairs: CurvaturePairs, k: int) -> Warm:
    """The full split's (problem ``k``'s) :class:`Warm` after the solve at ``lam``."""
    rows = slice(k, k + 1)
    return Warm(
        lam, z[rows], info.loss[rows], info.grad[rows], pairs.snapshot(rows), info.gamma[rows]
    )


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
        path = cv_path(
            design, y, n_classes, None, 0, [float(l2)], max_iter=max_iter, tol=tol, ftol=0.0
        )
    z = path.fulls[0].double().cpu().numpy()  # (K, r+1)
    basis = np.eye(x.shape[1]) if design.basis is None else design.basis
    return basis @ z[:, :-1].T, z[:, -1].copy()


def geometric_middle(grid: Sequence[float]) -> float:
    """The strength used when cross-validation is impossible."""
    return float(math.exp(np.mean(np.log(np.asarray(grid, dtype=np.float64)))))
