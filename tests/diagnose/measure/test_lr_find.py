"""LR range test: a known curve, a real run, divergence stop and no side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diagnose.measure.lr_find import lr_range_test, suggest_lr


def test_suggest_lr_finds_steepest_descent_before_minimum():
    lrs = np.logspace(-5, 1, 61)
    x = np.log10(lrs)
    # loss falls along a tanh centred at 1e-2 (steepest there), bottoms out near 1, then rises
    losses = 2.0 - np.tanh(2 * (x + 2)) + np.where(x > 0, 5 * x**2, 0)
    steep, at_min = suggest_lr(lrs, losses)
    assert steep == pytest.approx(1e-2, rel=0.3)
    assert at_min > steep


def test_suggest_lr_none_when_never_descending():
    lrs = np.logspace(-5, 1, 40)
    steep, _ = suggest_lr(lrs, np.linspace(1, 3, 40))
    assert steep is None


def _data(seed=0, n=256, d=8, k=3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 3
    y = torch.randint(0, k, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]


def test_range_test_restores_model_and_suggests_a_stable_lr():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = lr_range_test(model, _data(), num_steps=100, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training
    assert res.suggested_lr is not None
    assert 1e-4 < res.suggested_lr < res.min_loss_lr
    assert len(res.lrs) == len(res.losses) == len(res.raw_losses)
    assert np.all(np.diff(res.lrs) > 0)


def test_range_test_stops_when_loss_diverges():
    model = nn.Linear(8, 3)
    res = lr_range_test(model, _data(), start_lr=1e-3, end_lr=1e4, num_steps=100, progress=False)
    assert len(res.lrs) < 100


def test_range_test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_range_test(nn.Linear(2, 2), _data(), start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="no batches"):
        lr_range_test(nn.Linear(2, 2), [])


def test_consensus_of_repeated_range_tests():
    from diagnose.measure.lr_find import MAX_SPREAD, consensus_lr

    lr, why = consensus_lr([0.01, 0.02, 0.015, None, 0.012])
    # the geometric median of the four suggestions: sqrt(0.012 * 0.015)
    assert lr == pytest.approx((0.012 * 0.015) ** 0.5, rel=1e-2) and why is None
    lr, why = consensus_lr([2.7e-6, 0.01, 8.5, 0.02, 0.03])
    assert lr is None and f"more than {MAX_SPREAD:g}x apart" in why and "2.7e-06" in why
    lr, why = consensus_lr([None, None, None, 0.01, 0.02])
    assert lr is None and "Only 2 of 5" in why


def test_a_tiny_training_set_repeats_the_range_test():
    from diagnose.measure.lr_find import RANGE_REPEATS, lr_find_head

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 8)
    x = rng.standard_normal((24, 16)).astype(np.float32) + 2.0 * y[:, None]
    out = lr_find_head(x, y, np.arange(16), seed=0, progress=False)
    assert len(out["repeats"]) == RANGE_REPEATS  # 16 rows: a single batch of 32
    if out["suggested_lr"] is None:
        assert out["notes"]  # why there is no suggestion
    else:
        got = sorted(s for s in out["repeats"] if s is not None)
        # within the repeats' range, up to the 3 significant digits it is rounded to
        assert 0.995 * got[0] <= out["suggested_lr"] <= 1.005 * got[-1]
    many = np.tile(x, (20, 1))
    big = lr_find_head(many, np.tile(y, 20), np.arange(480), seed=0, progress=False)
    assert "repeats" not in big  # 15 distinct batches: one test is enough
