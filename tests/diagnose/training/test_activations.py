"""Tests of capture_head_inputs' layout: the trial sequence, then channels-last when faster."""

from __future__ import annotations

import pytest
import torch
from tiny_models import Tiny

import probes
import probes._memory_format as mf
from diagnose.training.activations import capture_head_inputs
from diagnose.training.loop import Phase

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_decisions():
    probes.forget_memory_formats()
    yield
    probes.forget_memory_formats()


def _pass(model, xs, batch_size=4):
    phase = Phase("capture")
    return capture_head_inputs(model, "head", xs, batch_size, CPU, phase), phase


@pytest.mark.parametrize("faster", [True, False])
def test_head_inputs_match_nchw_in_either_layout(monkeypatch, faster):
    torch.manual_seed(0)
    model = Tiny().eval()
    gen = torch.Generator().manual_seed(1)
    xs = [torch.rand(20, 1, 8, 8, generator=gen), torch.rand(14, 1, 8, 8, generator=gen)]
    with probes.memory_format_applied(model, probes.FormatChoice("contiguous", "ref")):
        with torch.no_grad():
            ref = [model.pool(model.block3(model.block2(model.block1(x)))) for x in xs]
    # Machine-independent: the margin channels-last must beat NCHW by chooses it, or never.
    monkeypatch.setattr(mf, "_MARGIN", 1e12 if faster else 0.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    feats, phase = _pass(model, xs)
    (choice,) = mf._decisions.values()
    assert choice.channels_last is faster
    # Float32, another convolution algorithm: 1e-5 of the largest |value| (~100 ulps).
    for got, want in zip(feats, ref):
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * max(1.0, want.abs().max()))
    assert torch.equal(feats[0][:4], _pass(model, [xs[0][:4]])[0][0])  # batch 1 ran NCHW
    assert phase.steps == 5 + 4 and phase.flops_per_step > 0  # the trial adds no batch
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous(), k
    again, _ = _pass(model, xs)
    assert all(torch.equal(a, b) for a, b in zip(again, feats))  # kept: same layout, same bits
