"""Weighted binary logistic regression on a probe design, for the domain classifier (private).

:func:`probes.gap.proxy_a_distance` solves one weighted problem per
cross-validation fold, all at once, with the probes' batched L-BFGS
(:func:`probes._solver.minimize_stacked`). Two classes need one logit per row, ``t = x v``, not
two softmax columns: the two-column objective's optimum lies on
``z1 = -z0 = v / 2``, so the same minimiser comes from half the products.
"""

from __future__ import annotations

import numpy as np
import torch

from probes._design import Design
from probes._probe_fit import solve_preconditioned

__all__ = ["solve_binary_weighted"]


def _objective(design: Design, labels: torch.Tensor, weights: torch.Tensor, lam: float):
    """``fun(v)`` for the probes' L-BFGS (v: (B, 1, r+1)): per problem, the weighted
    cross-entropy ``softplus(-(2y - 1) t)`` of ``t = x v`` plus ``lam/4 ||v||^2``
    (intercept unpenalised), summed in float64, and its gradient.

    On the line ``z1 = -z0 = v / 2`` this is the two-column softmax objective with
    penalty ``lam/2 (||z0||^2 + ||z1||^2)``, and its gradient in ``v`` equals that
    one's in ``z1``: the same ``tol`` stops both.
    """
    lam_pen = 0.5 * lam * design.pen
    nb = weights.shape[0]
    parts = []
    for a, b in design.bounds:
        # CE = softplus(sign t) with sign +1 for class 0 and -1 for class 1, and
        # dCE/dt = sign sigmoid(sign t).
        sign = 1.0 - 2.0 * labels[a:b].to(weights.dtype)
        w = weights[:, a:b]
        parts.append((sign, w, w * sign))

    def fun(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = v.view(nb, v.shape[2])
        grad = flat * lam_pen
        loss = (grad * flat).sum(dim=1, dtype=torch.float64).mul_(0.5)
        for (_, _, f, f_t), (sign, w, w_sign) in zip(design.iter_blocks(), parts):
            u = (flat @ f_t).mul_(sign)
            ce = torch.nn.functional.softplus(u).mul_(w)
            loss.add_(ce.sum(dim=1, dtype=torch.float64))
            grad = torch.addmm(grad, u.sigmoid_().mul_(w_sign), f)
        return loss, grad.view(v.shape)

    return fun


def solve_binary_weighted(
    design: Design,
    y: np.ndarray,
    weights: np.ndarray,
    lam: float,
    *,
    max_iter: int,
    tol: float,
    ftol: float = 1e-9,
) -> torch.Tensor:
    """One problem per row of ``weights`` (B, n): problem ``b`` minimises
    ``sum_i weights[b, i] CE_i + lam/2 (||z0||^2 + ||z1||^2)`` over two softmax columns
    on the design's rows (``y`` in {0, 1}; a row of weights sums to 1; a zero weight
    leaves the row out), as the one logit ``v = z1 - z0``. Returns ``v`` (B, 1, r+1):
    the design's ``block_logits`` give the log-odds of class 1. ``tol`` (per problem)
    and ``ftol`` (scipy's test on the summed objective) stop the solve as in
    :func:`probes._solver.minimize_stacked`."""
    dev, dt = design.device, design.dtype
    w = torch.as_tensor(weights, dtype=dt, device=dev)
    labels = torch.as_tensor(y, device=dev)
    v = torch.zeros(w.shape[0], 1, design.width, dtype=dt, device=dev)
    fun = _objective(design, labels, w, lam)
    # The probes' preconditioner at this objective's penalty Hessian, lam/2 pen.
    return solve_preconditioned(design, fun, 0.5 * lam, v, max_iter=max_iter, tol=tol, ftol=ftol)[0]
