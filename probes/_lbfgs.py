"""Batched full-batch L-BFGS for L2-regularised multinomial logistic regression.

Private to :mod:`probes.linear`. Solves ``B`` problems that share one feature
matrix and differ in row weights (the cross-validation folds and the full
training split) at once: one ``(B*K, p) @ (p, n)`` product gives every
problem's logits, so the features are read twice per evaluation however many
problems there are, and a step costs a fixed, small number of tensor ops.

Problem ``b`` minimises, over ``Z_b`` of shape (K, p),

    f_b(Z_b) = sum_i w_bi * CE(softmax(Z_b F_i), y_i) + lam/2 * sum_j pen_j ||Z_b[:, j]||^2

where ``w_b`` sums to one over the rows problem ``b`` is fitted on (so the loss
is the MEAN cross-entropy; other rows have weight 0) and ``pen_j`` is 1 for
feature columns and 0 for the unpenalised intercept column.

The inverse-Hessian approximation is the compact L-BFGS form (Byrd, Nocedal &
Schnabel 1994, Nocedal & Wright eq. 7.24) with seed ``H0 = gamma * diag(precond)``:
a fixed diagonal preconditioner scaled by the usual ``s.y / y.Dy`` factor. The
line search is batched Armijo backtracking, each problem with its own step.
The objective is convex, so accepted steps give ``s.y >= 0``; pairs that do not
(round-off, finished problems) are stored as zeros with a unit diagonal in
``R`` and drop out of the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SolveInfo", "multinomial_lbfgs", "multinomial_loss_grad"]


@dataclass
class SolveInfo:
    """How a batched solve ended: iterations run and per-problem convergence."""

    n_iter: int
    converged: torch.Tensor  # (B,) bool
    gamma: torch.Tensor  # (B,) last inverse-Hessian scale, a warm start for the next solve


def multinomial_loss_grad(
    feats: torch.Tensor,
    feats_t: torch.Tensor,
    onehot_w: torch.Tensor,
    weights: torch.Tensor,
    z: torch.Tensor,
    lam: float,
    pen: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objectives (float64, (B,)), gradients (B, K, p) and logits (B, K, n).

    ``feats`` (n, p) and its contiguous transpose ``feats_t`` (p, n);
    ``onehot_w`` (B, K, n) is the one-hot label times each problem's row
    weight; ``weights`` (B, 1, n); ``z`` (B, K, p); ``pen`` (p,). Classes sit
    before rows so the softmax reduces over a leading axis, which torch
    vectorises along the contiguous rows (about 20x faster than a softmax
    over a last axis of 10).
    """
    b, k, p = z.shape
    n = feats.shape[0]
    logits = (z.reshape(b * k, p) @ feats_t).view(b, k, n)
    logp = torch.log_softmax(logits, dim=1)
    zp = z * pen
    # Sums over rows in the working dtype (pairwise summation), the rest in
    # float64: the mean cross-entropy must resolve changes near 1e-7.
    loss = -(onehot_w * logp).sum(dim=2).double().sum(dim=1)
    loss = loss + (0.5 * lam) * (zp * z).sum(dim=(1, 2)).double()
    dlogits = torch.exp(logp) * weights - onehot_w
    grad = (dlogits.view(b * k, n) @ feats).view(b, k, p) + lam * zp
    return loss, grad, logits


class _History:
    """The last ``size`` curvature pairs of every problem, in time order, with
    the small matrices of the compact form: ``sy`` (B, m, m) with entries
    ``s_i.y_j``, ``r`` its upper triangle and ``ydy`` with entries ``y_i.D y_j``.

    A rejected pair (``s.y`` not safely positive: round-off, or a finished
    problem) is stored as zeros with a unit diagonal in ``r``, so ``r`` stays
    invertible and the pair adds nothing to the update.
    """

    def __init__(self, nb: int, dim: int, size: int, d_flat: torch.Tensor, like: torch.Tensor):
        self.size, self.d_flat = size, d_flat
        self.s = like.new_zeros(nb, 0, dim)
        self.y = like.new_zeros(nb, 0, dim)

    def __len__(self) -> int:
        return self.s.shape[1]

    def push(self, s_new: torch.Tensor, y_new: torch.Tensor, keep: torch.Tensor) -> None:
        mask = keep.to(s_new.dtype)[:, None, None]
        self.s = torch.cat([self.s, s_new[:, None] * mask], dim=1)[:, -self.size :]
        self.y = torch.cat([self.y, y_new[:, None] * mask], dim=1)[:, -self.size :]
        sy = torch.bmm(self.s, self.y.transpose(1, 2))
        diag = torch.diagonal(sy, dim1=1, dim2=2)
        self.diag = torch.diag_embed(diag)
        self.r = torch.triu(sy) + torch.diag_embed((diag == 0).to(sy.dtype))
        self.ydy = torch.bmm(self.y * self.d_flat, self.y.transpose(1, 2))

    def direction(self, grad: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """``-H g`` per problem (Nocedal & Wright eq. 7.24) for ``grad`` (B, P)."""
        dg = self.d_flat * grad
        g = gamma[:, None]
        if len(self) == 0:
            return -g * dg
        a = torch.bmm(self.s, grad[..., None])  # S^T g
        u = torch.linalg.solve_triangular(self.r, a, upper=True)
        mid = torch.bmm(self.diag + g[..., None] * self.ydy, u)
        mid = mid - g[..., None] * torch.bmm(self.y, dg[..., None])  # - Y^T H0 g
        top = torch.linalg.solve_triangular(self.r.transpose(1, 2), mid, upper=False)
        hg = g * dg + torch.bmm(self.s.transpose(1, 2), top)[..., 0]
        hg = hg - g * self.d_flat * torch.bmm(self.y.transpose(1, 2), u)[..., 0]
        return -hg


def multinomial_lbfgs(
    feats: torch.Tensor,
    feats_t: torch.Tensor,
    onehot_w: torch.Tensor,
    weights: torch.Tensor,
    lam: float,
    pen: torch.Tensor,
    precond: torch.Tensor,
    z0: torch.Tensor,
    *,
    max_iter: int = 200,
    tol: float = 1e-4,
    history: int = 8,
    ftol: float = 1e-9,
    gamma0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, SolveInfo]:
    """Minimise every problem from ``z0`` (B, K, p); returns the solutions, the
    logits at them (B, K, n) and a summary.

    A problem stops when its largest absolute gradient entry is at most ``tol``
    (scikit-learn's lbfgs criterion on the same mean-loss objective), when its
    objective changes by less than ``ftol`` relative (float32 resolves little
    below 1e-7), or when the line search can no longer decrease it; stopped
    problems keep their iterate while the others go on.
    """

    def evaluate(zz):
        return multinomial_loss_grad(feats, feats_t, onehot_w, weights, zz, lam, pen)

    z = z0.clone()
    nb, k, p = z.shape
    dt = z.dtype
    d_flat = precond.to(dt)[None, :].expand(k, p).reshape(1, k * p)
    loss, grad, logits = evaluate(z)
    done = grad.abs().amax(dim=(1, 2)) <= tol
    hist = _History(nb, k * p, history, d_flat, z)
    gamma = torch.ones(nb, dtype=dt, device=z.device) if gamma0 is None else gamma0.clone()
    n_iter = 0
    while n_iter < max_iter and not bool(done.all()):
        n_iter += 1
        g_flat = grad.view(nb, k * p)
        direction = hist.direction(g_flat, gamma)
        slope = (g_flat * direction).sum(dim=1)
        bad = ~(slope < 0)
        if bool(bad.any()):  # round-off only: restart from preconditioned steepest descent
            direction = torch.where(bad[:, None], -d_flat * g_flat, direction)
            slope = (g_flat * direction).sum(dim=1)
        direction = direction.masked_fill(done[:, None], 0.0).view(nb, k, p)
        slope = slope.masked_fill(done, 0.0).double()
        # Unit step first: L-BFGS scales its direction, so it is accepted almost always.
        new_z = z + direction
        new_loss, new_grad, new_logits = evaluate(new_z)
        accepted = new_loss <= loss + 1e-4 * slope
        if not bool(accepted.all()):
            new_z, new_loss, new_grad, new_logits, accepted = _backtrack(
                evaluate,
                (z, loss, grad, logits),
                (new_z, new_loss, new_grad, new_logits),
                slope,
                direction,
                accepted,
            )
        s_new = (new_z - z).view(nb, k * p)
        y_new = (new_grad - grad).view(nb, k * p)
        sy = (s_new * y_new).sum(dim=1)
        keep = sy > 1e-10 * (y_new * y_new).sum(dim=1)
        hist.push(s_new, y_new, keep)
        ydy = (y_new * d_flat * y_new).sum(dim=1)
        gamma = torch.where(keep, sy / torch.where(keep, ydy, 1.0), gamma)
        change = (loss - new_loss).abs() <= ftol * new_loss.abs().clamp_min(1.0)
        z, loss, grad, logits = new_z, new_loss, new_grad, new_logits
        done = done | ~accepted | change | (grad.abs().amax(dim=(1, 2)) <= tol)
    converged = grad.abs().amax(dim=(1, 2)) <= tol
    return z, logits, SolveInfo(n_iter=n_iter, converged=converged, gamma=gamma)


def _backtrack(evaluate, current, unit, slope, direction, ok):
    """Armijo backtracking for the problems whose unit step failed (``~ok``).

    ``current`` and ``unit`` are (z, loss, grad, logits) at step 0 and 1. Each
    failed step shrinks to the minimiser of the quadratic through f(0), f'(0)
    and f(step), kept within [0.1, 0.5] of it. Returns the accepted iterates
    (the current one where no decrease was found: the limit of precision) and
    which problems found a decrease.
    """
    z, loss = current[0], current[1]
    m3 = ok[:, None, None]
    new = [
        torch.where(m3, unit[0], z),
        torch.where(ok, unit[1], loss),
        torch.where(m3, unit[2], current[2]),
        torch.where(m3, unit[3], current[3]),
    ]
    step = torch.ones_like(slope)
    t_loss = unit[1]
    accepted = ok
    for _ in range(30):
        curv = 2.0 * (t_loss - loss - slope * step)
        shrink = (-slope * step / curv.clamp_min(1e-300)).clamp(0.1, 0.5)
        shrink = torch.where(torch.isfinite(t_loss), shrink, 0.1)
        step = torch.where(accepted, step, step * shrink)
        trial = z + step.to(z.dtype)[:, None, None] * direction
        t_loss, t_grad, t_logits = evaluate(trial)
        ok = (t_loss <= loss + 1e-4 * step * slope) & ~accepted
        if bool(ok.any()):
            m3 = ok[:, None, None]
            new = [
                torch.where(m3, trial, new[0]),
                torch.where(ok, t_loss, new[1]),
                torch.where(m3, t_grad, new[2]),
                torch.where(m3, t_logits, new[3]),
            ]
            accepted = accepted | ok
        if bool(accepted.all()):
            break
    return (*new, accepted)
