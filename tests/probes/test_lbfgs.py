"""Tests of the batched L-BFGS solver behind the linear probe (probes._lbfgs): a path
whose solves carry their curvature pairs from strength to strength reaches each
strength's own optimum, and a predicted first step is taken only where it lowers
the objective. (The curvature memory itself: test_curvature.py.)
"""

from __future__ import annotations

import numpy as np
import torch

from probes._design import prepare
from probes._lbfgs import multinomial_lbfgs
from probes._probe_fit import _objective, _row_weights, cv_path, stratified_folds

_TOL = 1e-10  # relative, float64 products of a few hundred terms


def _design(n=300, d=12, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) + 1.5 * np.eye(k, d)[y]
    return prepare(x, torch.device("cpu"), torch.float64, stream=False), y


def _centred(z):
    """``z`` with the intercepts centred over classes: adding one constant to every
    class's intercept leaves the softmax, so the objective, unchanged."""
    z = z.clone()
    z[..., -1] -= z[..., -1].mean(dim=-1, keepdim=True)
    return z


def test_path_with_carried_pairs_reaches_each_strengths_own_optimum():
    # Each strength's solution along the warm-started path against the same problem
    # solved alone from zero; both to a gradient of 1e-7, float64 (below that the
    # objective's own round-off stops the line search). Up to the intercepts' common
    # shift the objective is strictly convex, with curvature at least l2 (>= 1e-3
    # here): both solutions lie within tol / l2 = 1e-4 of the minimiser.
    design, y = _design()
    grid = [1.0, 0.1, 0.01, 1e-3]
    fold = stratified_folds(y, 3, 0)
    path = cv_path(design, y, 4, fold, 3, grid, max_iter=2000, tol=1e-7, ftol=0.0)
    assert len(path.fulls) == len(grid)  # no CV accuracy of 1: the whole grid is walked
    labels = torch.as_tensor(y)
    weights = _row_weights(fold, 3, design.n, torch.device("cpu"), torch.float64)
    for lam, full in zip(grid, path.fulls):
        fun = _objective(design, labels, weights, lam)
        pre = 1.0 / (0.05 * design.evals + lam * design.pen)
        z0 = torch.zeros(4, 4, design.width, dtype=torch.float64)
        alone, info = multinomial_lbfgs(fun, pre, z0, max_iter=2000, tol=1e-7, ftol=0.0)
        assert bool(info.converged.all())
        assert float((_centred(full) - _centred(alone[3])).abs().max()) < 2e-4


def test_first_step_is_taken_only_where_it_lowers_the_objective():
    design, y = _design(seed=1)
    labels = torch.as_tensor(y)
    weights = _row_weights(None, 0, design.n, torch.device("cpu"), torch.float64)
    fun = _objective(design, labels, weights.expand(2, -1).contiguous(), 0.1)
    pre = 1.0 / (0.05 * design.evals + 0.1 * design.pen)
    z0 = torch.zeros(2, 4, design.width, dtype=torch.float64)
    exact, _ = multinomial_lbfgs(fun, pre, z0, max_iter=2000, tol=1e-7, ftol=0.0)
    # Problem 0 is offered the exact solution, problem 1 a step uphill.
    step = torch.stack([exact[0], -10.0 * exact[1]])
    z, info = multinomial_lbfgs(fun, pre, z0, max_iter=1, tol=1e-7, ftol=0.0, first_step=step)
    assert info.n_iter == 1
    assert torch.equal(z[0], exact[0])
    assert torch.equal(z[1], z0[1])
    solved, info = multinomial_lbfgs(
        fun, pre, z0, max_iter=2000, tol=1e-7, ftol=0.0, first_step=step
    )
    assert bool(info.converged.all())
    # Both within tol / l2 = 1e-6 of the minimiser, up to the intercepts' common shift.
    assert float((_centred(solved) - _centred(exact)).abs().max()) < 2e-6
