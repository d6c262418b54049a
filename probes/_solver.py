"""Stacked smooth convex problems solved together by scipy's L-BFGS-B (private).

The probes solve ``B`` problems that share their data at once: the
cross-validation folds and the full training split of a linear probe, the folds
of the domain classifier. The caller's ``fun(z)`` returns every problem's
objective and gradient from one pass over the shared features (``z`` is
``(B, K, P)``, the products in the design's dtype, the sums in float64). The
problems' sum is one convex problem whose minimiser is each problem's own, so
``scipy.optimize.minimize(method="L-BFGS-B")`` solves them as one vector.

Preconditioning is a change of variables: with ``pre`` an estimate of the
inverse diagonal Hessian per column, scipy minimises over ``u = z / sqrt(pre)``,
where the problem is close to isotropic. A problem has converged when its
gradient's largest entry (in ``z``) is at most ``tol``, scikit-learn's lbfgs
criterion on the same mean-loss objective; the solve stops when every problem
has, when the summed objective's relative change falls under ``ftol`` (scipy's
own test), or at ``max_iter`` iterations.

scipy's iteration runs BLAS-1 operations on the stacked vector through one BLAS
thread: they are too small to share, a dot product's sum then never depends on
the thread count, and OpenBLAS threads woken at every iteration spin on the
cores torch's threads need for the objective (``benchmarks/perf_suite.py`` has
the measurement). The objective's torch products run at the caller's torch
threads; this is the one place the library sets a thread count, for its own
solver, and only for the solve.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from threadpoolctl import ThreadpoolController

__all__ = ["HISTORY", "SolveInfo", "minimize_stacked"]

#: ``fun(z) -> (objective float64 (B,), gradient shaped like z)``.
Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Curvature pairs L-BFGS keeps (scipy's ``maxcor``; its default is 10).
HISTORY = 10


@functools.cache
def _controller() -> ThreadpoolController:
    """The BLAS libraries, found once (at the first solve): finding them reads /proc."""
    return ThreadpoolController()


def _one_blas_thread():
    """A context with one BLAS thread for the length of a solve."""
    return _controller().limit(limits=1, user_api="blas")


@dataclass
class SolveInfo:
    """How a stacked solve ended.

    Attributes:
        n_iter: L-BFGS iterations (shared by the problems).
        converged: (B,) bool: the problem's gradient is within ``tol``, or the summed
            objective stopped changing (scipy's relative ``ftol`` test).
        message: why scipy stopped (its own words; ours when the gradient test did).
        max_grad: (B,) the largest gradient entry of each problem at the solution.
        loss: (B,) float64 objective at the solution.
    """

    n_iter: int
    converged: torch.Tensor
    message: str
    max_grad: torch.Tensor
    loss: torch.Tensor


def _max_grad(grad: torch.Tensor) -> torch.Tensor:
    return grad.abs().flatten(1).amax(dim=1)


def minimize_stacked(
    fun: Objective,
    precond: torch.Tensor,
    z0: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    ftol: float = 1e-9,
) -> tuple[torch.Tensor, SolveInfo]:
    """Minimise every problem of ``fun`` from ``z0`` (B, K, P); ``precond`` (P,) > 0.

    Returns the solutions (the tensor ``fun`` was last evaluated at, so a caller that
    keeps ``fun``'s last products can recognise it) and a :class:`SolveInfo`.
    """
    shape, dtype, device = z0.shape, z0.dtype, z0.device
    scale = precond.double().sqrt().cpu().numpy()
    scale = np.broadcast_to(scale, shape).ravel().copy()
    last: dict = {}

    def objective(u: np.ndarray) -> tuple[float, np.ndarray]:
        z = torch.from_numpy(u * scale).view(shape).to(device=device, dtype=dtype)
        loss, grad = fun(z)
        last.update(u=u.copy(), z=z, loss=loss, grad=grad)
        g = grad.detach().double().cpu().numpy().ravel() * scale
        return float(loss.sum()), g

    def stop(intermediate_result) -> None:
        # The callback sees the accepted iterate, which the line search evaluated last.
        if np.array_equal(intermediate_result.x, last["u"]) and bool(
            (_max_grad(last["grad"]) <= tol).all()
        ):
            raise StopIteration

    u0 = z0.detach().double().cpu().numpy().ravel() / scale
    with _one_blas_thread():
        res = minimize(
            objective,
            u0,
            jac=True,
            method="L-BFGS-B",
            callback=stop,
            # gtol 0: the gradient test is ours (per problem, in z), not scipy's (over all, in u).
            options={"maxiter": int(max_iter), "gtol": 0.0, "ftol": float(ftol), "maxcor": HISTORY},
        )
    if not np.array_equal(res.x, last["u"]):
        objective(res.x)
    gmax = _max_grad(last["grad"])
    stalled = res.status == 0  # scipy's relative-reduction test: nothing more to gain
    converged = (gmax <= tol) | stalled
    message = "gradient within tolerance" if res.status == 99 else str(res.message)
    info = SolveInfo(int(res.nit), converged.cpu(), message, gmax.cpu(), last["loss"])
    return last["z"], info
