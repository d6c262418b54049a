"""Tests of the batched L-BFGS solver behind the linear probe (probes._lbfgs).

The compact inverse-Hessian product is checked against the two-loop recursion
(Nocedal & Wright, Numerical Optimization, 2nd ed., Algorithm 7.4), transcribed
here, on the same pairs; the ring buffer, the per-push update of ``R^-1`` and
the move of the pairs to a new strength must all leave the product unchanged.
Everything runs in float64, so products agree to round-off: 1e-10 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes._design import prepare
from probes._lbfgs import CurvaturePairs, multinomial_lbfgs
from probes._probe_fit import _objective, _row_weights, cv_path, stratified_folds

_TOL = 1e-10  # relative, float64 products of a few hundred terms


def _two_loop(s, y, g, gamma, d):
    """``H g`` by Algorithm 7.4 with ``H0 = gamma * diag(d)``; pairs oldest first."""
    q = g.clone()
    alphas = []
    for i in reversed(range(s.shape[0])):
        rho = 1.0 / (s[i] @ y[i])
        alphas.append(rho * (s[i] @ q))
        q = q - alphas[-1] * y[i]
    r = gamma * d * q
    for i, alpha in zip(range(s.shape[0]), reversed(alphas)):
        rho = 1.0 / (s[i] @ y[i])
        r = r + s[i] * (alpha - rho * (y[i] @ r))
    return r


def _pairs(n, dim=20, nb=3, seed=0):
    """Curvature pairs of a convex quadratic: y = A s with A positive definite."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    a = a @ a.T + dim * torch.eye(dim, dtype=torch.float64)
    s = torch.randn(nb, n, dim, generator=gen, dtype=torch.float64)
    return s, s @ a


def _push(mem, s, y, keep=None):
    keep = torch.ones(s.shape[0], dtype=torch.bool) if keep is None else keep
    mem.push(s, y, y * mem.d_flat, keep, (s * y).sum(dim=1))


def _memory(nb, size, dim=20):
    """Empty pairs with a unit preconditioner, a gradient and unit scales to apply them to."""
    g = torch.randn(nb, dim, dtype=torch.float64)
    mem = CurvaturePairs(nb, dim, size, g)
    d = torch.ones(1, dim, dtype=torch.float64)
    mem.retarget(d)
    return mem, g, torch.ones(nb, dtype=torch.float64), d


def _reference(s, y, g, gamma, d):
    return torch.stack([_two_loop(s[b], y[b], g[b], gamma[b], d[0]) for b in range(len(g))])


def _close(a, b):
    return float((a - b).abs().max() / b.abs().max()) < _TOL


@pytest.mark.parametrize(("n_pairs", "size"), [(0, 4), (2, 4), (4, 4), (7, 4), (13, 5)])
def test_product_is_the_two_loop_recursion_on_the_last_pairs(n_pairs, size):
    dim, nb = 20, 3
    s, y = _pairs(n_pairs, dim, nb)
    d = torch.rand(1, dim, dtype=torch.float64) + 0.5
    g = torch.randn(nb, dim, dtype=torch.float64)
    gamma = torch.rand(nb, dtype=torch.float64) + 0.5
    mem = CurvaturePairs(nb, dim, size, g)
    mem.retarget(d)
    for i in range(n_pairs):
        _push(mem, s[:, i], y[:, i])
    ref = _reference(
        s[:, n_pairs - min(n_pairs, size) :], y[:, n_pairs - min(n_pairs, size) :], g, gamma, d
    )
    assert _close(mem.product(g, gamma), ref)


def test_retarget_moves_every_pair_to_the_shifted_objective_exactly():
    # A quadratic term c/2 ||z||^2 added to the objective adds c * s to every y.
    dim, nb, size, c = 20, 2, 4, 0.7
    s, y = _pairs(6, dim, nb, seed=1)
    d = torch.rand(1, dim, dtype=torch.float64) + 0.5
    d2 = torch.rand(1, dim, dtype=torch.float64) + 0.5
    g = torch.randn(nb, dim, dtype=torch.float64)
    gamma = torch.ones(nb, dtype=torch.float64)
    mem = CurvaturePairs(nb, dim, size, g)
    mem.retarget(d)
    for i in range(6):
        _push(mem, s[:, i], y[:, i])
    mem.retarget(d2, torch.full((1, dim), c, dtype=torch.float64))
    shifted = y[:, -size:] + c * s[:, -size:]
    assert _close(mem.product(g, gamma), _reference(s[:, -size:], shifted, g, gamma, d2))
    # Pushes after the refactorisation go on updating R^-1 one column at a time.
    s2, y2 = _pairs(3, dim, nb, seed=2)
    for i in range(3):
        _push(mem, s2[:, i], y2[:, i])
    s_all = torch.cat([s[:, -size:], s2], dim=1)[:, -size:]
    y_all = torch.cat([shifted, y2], dim=1)[:, -size:]
    assert _close(mem.product(g, gamma), _reference(s_all, y_all, g, gamma, d2))


def test_rejected_pair_adds_nothing():
    s, y = _pairs(3, seed=3)
    mem, g, gamma, d = _memory(3, 4)
    _push(mem, s[:, 0], y[:, 0])
    noise = torch.randn(g.shape, dtype=torch.float64)
    _push(mem, noise, -noise, torch.zeros(3, dtype=torch.bool))
    _push(mem, s[:, 1], y[:, 1])
    _push(mem, s[:, 2], y[:, 2])
    assert _close(mem.product(g, gamma), _reference(s, y, g, gamma, d))


def test_retarget_drops_a_pair_that_stops_being_positive():
    s, y = _pairs(2, nb=1, seed=4)
    mem, g, gamma, d = _memory(1, 4)
    _push(mem, s[:, 0], y[:, 0])
    _push(mem, s[:, 1], y[:, 1])
    # Adding -c * s to y makes s.y negative for a pair with s.y / s.s < c: a shift
    # between the two pairs' ratios drops one and keeps the other.
    ratio = [float((s[0, i] @ y[0, i]) / (s[0, i] @ s[0, i])) for i in range(2)]
    shift = -sum(ratio) / 2
    mem.retarget(d, torch.full((1, g.shape[1]), shift, dtype=torch.float64))
    kept = [int(np.argmax(ratio))]
    ref = _reference(s[:, kept], y[:, kept] + shift * s[:, kept], g, gamma, d)
    assert _close(mem.product(g, gamma), ref)


def test_snapshot_is_independent_of_later_pushes():
    s, y = _pairs(6, seed=5)
    mem, g, gamma, d = _memory(3, 4)
    for i in range(3):
        _push(mem, s[:, i], y[:, i])
    state = mem.snapshot(slice(1, 2))
    for i in range(3, 6):
        _push(mem, s[:, i], y[:, i])
    kept = CurvaturePairs.restore(state)
    ref = _reference(s[1:2, :3], y[1:2, :3], g[1:2], gamma[1:2], d)
    assert _close(kept.product(g[1:2], gamma[1:2]), ref)


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
