"""Batched full-batch L-BFGS for smooth convex problems that share their data.

Private to :mod:`probes.linear`. Solves ``B`` problems at once (the
cross-validation folds and the full training split of a linear probe): the
caller's ``fun(z)`` returns every problem's objective and gradient from one
pass over the shared features, and an L-BFGS step costs a fixed, small number
of tensor ops on top, whatever ``B``.

The inverse-Hessian approximation is the compact L-BFGS form (Byrd, Nocedal &
Schnabel 1994, Nocedal & Wright eq. 7.24) with seed ``H0 = gamma * diag(precond)``:
a fixed diagonal preconditioner scaled by the usual ``s.y / y.Dy`` factor. With
``W = [S; D Y]`` (2m rows) it reads ``H g = gamma D g + W^T (M0 + gamma M1) W g``;
``M0`` and ``M1`` (2m x 2m) are rebuilt once per accepted step, so a direction
is two thin products. Every product with a vector is written as a row vector
times a matrix: torch's batched matrix-times-column path is about 4x slower.

The line search is batched Armijo backtracking, each problem with its own
step. The objective is convex, so accepted steps give ``s.y >= 0``; pairs that
do not (round-off, finished problems) are stored as zeros with a unit diagonal
in ``R`` and drop out of the update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["SolveInfo", "multinomial_lbfgs"]

#: ``fun(z) -> (objective float64 (B,), gradient shaped like z)``.
Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SolveInfo:
    """How a batched solve ended: iterations run, per-problem convergence, and the
    objective and gradient at the returned solutions (``fun`` there, not evaluated again)."""

    n_iter: int
    converged: torch.Tensor  # (B,) bool
    gamma: torch.Tensor  # (B,) last inverse-Hessian scale, a warm start for the next solve
    loss: torch.Tensor  # (B,) float64
    grad: torch.Tensor  # like the solutions


class _History:
    """The last ``size`` curvature pairs of every problem, in time order, and
    the compact-form matrices built from them (see the module docstring).

    A rejected pair (``s.y`` not safely positive: round-off, or a finished
    problem) is stored as zeros with a unit diagonal in ``R``, so ``R`` stays
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
        m = self.s.shape[1]
        dy = self.y * self.d_flat
        sy = torch.bmm(self.s, self.y.transpose(1, 2))
        diag = torch.diagonal(sy, dim1=1, dim2=2)
        r = torch.triu(sy) + torch.diag_embed((diag == 0).to(sy.dtype))
        eye = torch.eye(m, dtype=sy.dtype, device=sy.device).expand_as(r)
        rinv = torch.linalg.solve_triangular(r, eye, upper=True)
        rinv_t = rinv.transpose(1, 2)
        ydy = torch.bmm(self.y, dy.transpose(1, 2))
        zero = torch.zeros_like(r)
        top0 = torch.bmm(rinv_t * diag[:, None, :], rinv)  # R^-T diag(s.y) R^-1
        top1 = torch.bmm(torch.bmm(rinv_t, ydy), rinv)  # R^-T Y^T D Y R^-1
        self.m0 = torch.cat([torch.cat([top0, zero], dim=2), torch.cat([zero, zero], dim=2)], dim=1)
        self.m1 = torch.cat(
            [torch.cat([top1, -rinv_t], dim=2), torch.cat([-rinv, zero], dim=2)], dim=1
        )
        self.w = torch.cat([self.s, dy], dim=1)  # (B, 2m, P)

    def direction(self, grad: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """``-H g`` per problem (Nocedal & Wright eq. 7.24) for ``grad`` (B, P)."""
        hg = gamma[:, None] * self.d_flat * grad
        if len(self) == 0:
            return -hg
        uv = torch.bmm(grad[:, None, :], self.w.transpose(1, 2))  # (B, 1, 2m): [S g, Y D g]
        mid = self.m0 + gamma[:, None, None] * self.m1
        coef = torch.bmm(uv, mid.transpose(1, 2))
        return -(hg + torch.bmm(coef, self.w)[:, 0])


def multinomial_lbfgs(
    fun: Objective,
    precond: torch.Tensor,
    z0: torch.Tensor,
    *,
    max_iter: int = 200,
    tol: float = 1e-4,
    history: int = 8,
    ftol: float = 1e-9,
    gamma0: torch.Tensor | None = None,
    initial: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, SolveInfo]:
    """Minimise every problem from ``z0`` (B, K, p); returns the solutions and a summary.

    ``precond`` (p,) is the diagonal inverse-Hessian seed per column (shared
    by the ``K`` rows). A problem stops when its largest absolute gradient
    entry is at most ``tol`` (scikit-learn's lbfgs criterion on the same
    mean-loss objective), when its objective changes by less than ``ftol``
    relative (float32 resolves little below 1e-7), or when the line search can
    no longer decrease it; stopped problems keep their iterate while the
    others go on. ``initial`` is ``fun(z0)`` when the caller has it already.
    """
    z = z0.clone()
    nb, k, p = z.shape
    dt = z.dtype
    d_flat = precond.to(dt)[None, :].expand(k, p).reshape(1, k * p)
    loss, grad = fun(z) if initial is None else initial
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
        new_loss, new_grad = fun(new_z)
        accepted = new_loss <= loss + 1e-4 * slope
        if not bool(accepted.all()):
            new_z, new_loss, new_grad, accepted = _backtrack(
                fun, (z, loss, grad), (new_z, new_loss, new_grad), slope, direction, accepted
            )
        s_new = (new_z - z).view(nb, k * p)
        y_new = (new_grad - grad).view(nb, k * p)
        sy = (s_new * y_new).sum(dim=1)
        keep = sy > 1e-10 * (y_new * y_new).sum(dim=1)
        hist.push(s_new, y_new, keep)
        ydy = (y_new * d_flat * y_new).sum(dim=1)
        gamma = torch.where(keep, sy / torch.where(keep, ydy, 1.0), gamma)
        change = (loss - new_loss).abs() <= ftol * new_loss.abs().clamp_min(1.0)
        z, loss, grad = new_z, new_loss, new_grad
        done = done | ~accepted | change | (grad.abs().amax(dim=(1, 2)) <= tol)
    converged = grad.abs().amax(dim=(1, 2)) <= tol
    return z, SolveInfo(n_iter=n_iter, converged=converged, gamma=gamma, loss=loss, grad=grad)


def _backtrack(fun, current, unit, slope, direction, ok):
    """Armijo backtracking for the problems whose unit step failed (``~ok``).

    ``current`` and ``unit`` are (z, loss, grad) at step 0 and 1. Each failed
    step shrinks to the minimiser of the quadratic through f(0), f'(0) and
    f(step), kept within [0.1, 0.5] of it. Returns the accepted iterates (the
    current one where no decrease was found: the limit of precision) and which
    problems found a decrease.
    """
    z, loss = current[0], current[1]
    m3 = ok[:, None, None]
    new = [
        torch.where(m3, unit[0], z),
        torch.where(ok, unit[1], loss),
        torch.where(m3, unit[2], current[2]),
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
        t_loss, t_grad = fun(trial)
        ok = (t_loss <= loss + 1e-4 * step * slope) & ~accepted
        if bool(ok.any()):
            m3 = ok[:, None, None]
            new = [
                torch.where(m3, trial, new[0]),
                torch.where(ok, t_loss, new[1]),
                torch.where(m3, t_grad, new[2]),
            ]
            accepted = accepted | ok
        if bool(accepted.all()):
            break
    return (*new, accepted)
