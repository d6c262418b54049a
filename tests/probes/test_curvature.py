"""Tests of the L-BFGS curvature memory behind the linear probe (probes._curvature).

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

from probes._curvature import CurvaturePairs

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
    for src, dst in zip((s, y * mem.d_flat, y), mem.slot()):
        dst.copy_(src)
    mem.commit(keep, (s * y).sum(dim=1))


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
