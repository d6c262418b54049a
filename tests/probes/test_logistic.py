"""Tests of probes._logistic: the domain classifier's weighted binary solve against
scikit-learn's binary LogisticRegression with the same weights and strength."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes._design import prepare
from probes._logistic import solve_binary_weighted


def _problem(seed: int, n: int, d: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + 0.3 * rng.normal(size=d) * (np.arange(n) % 2)[:, None]
    y = (np.arange(n) % 2).astype(np.int64)
    weights = rng.random((3, n)) * (rng.random((3, n)) > 0.2)  # zeros leave rows out
    return x, y, weights / weights.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("n", "d"), [(120, 5), (90, 40), (60, 150)])
def test_each_problem_is_sklearns_weighted_binary_logistic_regression(n, d):
    # sum_i w_i CE_i + lam/2 (|z0|^2 + |z1|^2) with z1 = -z0 = v/2 is, times 2/lam,
    # C sum_i w_i CE_i + |v|^2/2 with C = 2/lam: sklearn's binary objective.
    from sklearn.linear_model import LogisticRegression

    x, y, weights = _problem(n + d, n, d)
    lam = 0.05
    design = prepare(x, torch.device("cpu"), torch.float64, stream=False)
    # ftol=0: stopped by the gradient alone, at the optimum to float64 round-off.
    v = solve_binary_weighted(design, y, weights, lam, max_iter=5000, tol=1e-10, ftol=0.0)
    assert v.shape == (3, 1, design.width)
    margin = torch.cat([lg[:, 0] for _, _, lg in design.block_logits(v)], dim=1)
    feats = torch.cat([f for _, _, f, _ in design.iter_blocks()])[:, :-1].numpy()
    for b in range(3):
        ref = LogisticRegression(C=2.0 / lam, solver="newton-cholesky", tol=1e-12, max_iter=1000)
        ref.fit(feats, y, sample_weight=weights[b])
        # float64, both stopped at gradients near 1e-10: the margins (of order 1-5, with
        # condition numbers up to ~1e3 here) agree to 1e-7 seen; 1e-6 absolute allowed.
        np.testing.assert_allclose(margin[b].numpy(), ref.decision_function(feats), atol=1e-6)


def test_the_gradient_is_the_two_column_objectives():
    # At the two columns z1 = -z0 = v/2 of the returned logit, the two-column softmax
    # objective's gradient is small: the solve stopped on the same criterion (largest
    # entry <= tol) in both forms (ftol=0: the objective's change stops nothing).
    x, y, weights = _problem(3, 80, 6)
    lam, tol = 0.1, 1e-6
    design = prepare(x, torch.device("cpu"), torch.float64, stream=False)
    v = solve_binary_weighted(design, y, weights, lam, max_iter=5000, tol=tol, ftol=0.0)
    z = torch.cat([-0.5 * v, 0.5 * v], dim=1).requires_grad_(True)
    w = torch.as_tensor(weights)
    loss = 0.5 * lam * (z[:, :, :-1] ** 2).sum()
    for a, b, lg in design.block_logits(z):
        logp = torch.log_softmax(lg, dim=1)
        picked = logp.gather(1, torch.as_tensor(y[a:b])[None, None].expand(3, 1, b - a))
        loss = loss - (w[:, None, a:b] * picked).sum()
    (grad,) = torch.autograd.grad(loss, z)
    assert float(grad.abs().max()) <= 2 * tol
