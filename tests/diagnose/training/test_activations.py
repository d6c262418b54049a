"""Tests of capture_head_inputs: the head's input features, in the layout the net runs in."""

from __future__ import annotations

import pytest
import torch
from tiny_models import Tiny

from diagnose.training.activations import capture_head_inputs
from diagnose.training.loop import Phase

CPU = torch.device("cpu")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_head_inputs_match_nchw_in_either_layout(layout):
    torch.manual_seed(0)
    model = Tiny().eval()
    gen = torch.Generator().manual_seed(1)
    xs = [torch.rand(20, 1, 8, 8, generator=gen), torch.rand(14, 1, 8, 8, generator=gen)]
    with torch.no_grad():
        ref = [model.pool(model.block3(model.block2(model.block1(x)))) for x in xs]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    net = model.to(memory_format=layout)
    phase = Phase("capture")
    feats = capture_head_inputs(net, "head", xs, 4, CPU, phase, layout)
    # Float32, another convolution algorithm: 1e-5 of the largest |value| (~100 ulps).
    for got, want in zip(feats, ref):
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * max(1.0, want.abs().max()))
    assert phase.steps == 5 + 4 and phase.flops_per_step > 0
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    again = capture_head_inputs(net, "head", xs, 4, CPU, Phase("capture"), layout)
    assert all(torch.equal(a, b) for a, b in zip(again, feats))  # same layout, same bits
