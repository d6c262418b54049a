"""Tests of a capture pass in a plain memory layout (probes._layout, capture's memory_format)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from probes import capture
from probes._layout import SwappedWeights, in_format

CL = torch.channels_last


def _f32_atol(ref: np.ndarray) -> float:
    """Float32, another convolution algorithm (NHWC kernels sum in another order): 1e-5 of
    the largest |value| is ~100 float32 ulps of it, far above the ~1e-6 seen on resnet18."""
    return 1e-5 * max(1.0, float(np.abs(ref).max(initial=0.0)))


def _resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


def test_a_bad_request_is_one_line_naming_the_parameter():
    with pytest.raises(ValueError, match="'memory_format'.*'channels_last'"):
        capture(_resnet(), torch.rand(2, 3, 8, 8), memory_format="auto", progress=False)


def test_swapped_weights_apply_once_and_restore_the_very_tensors():
    net = _resnet()
    w = net.conv1.weight
    original = w.data_ptr()  # .data is a new alias on every access: compare storage
    weights = SwappedWeights(net)
    weights.apply("contiguous")
    assert w.data_ptr() == original
    weights.apply("channels_last")
    swapped = w.data_ptr()
    assert swapped != original and w.is_contiguous(memory_format=CL)
    weights.apply("channels_last")  # a second apply copies nothing
    assert w.data_ptr() == swapped
    weights.restore()
    weights.restore()
    assert w.data_ptr() == original and w.is_contiguous()


def test_in_format_converts_only_four_d_inputs_to_channels_last():
    x = torch.rand(2, 3, 4, 4)
    assert in_format(x, "channels_last").is_contiguous(memory_format=CL)
    assert in_format(x, "contiguous") is x
    v = torch.rand(2, 3)
    assert in_format(v, "channels_last") is v


def test_channels_last_capture_matches_nchw_and_leaves_the_model_as_it_was():
    net, x = _resnet(), torch.rand(24, 3, 32, 32)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ref = capture(net, x, batch_size=8, memory_format="contiguous", progress=False)
    got = capture(net, x, batch_size=8, memory_format="channels_last", progress=False)
    assert got.memory_format == "channels_last" and ref.memory_format == "contiguous"
    for name in ref.layers:
        np.testing.assert_allclose(
            got.features[name], ref.features[name], rtol=0, atol=_f32_atol(ref.features[name])
        )
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous(), k


def test_a_failing_channels_last_pass_still_puts_the_weights_back():
    net = _resnet()
    before = {name: p.data_ptr() for name, p in net.named_parameters()}
    with pytest.raises(ValueError):
        capture(net, torch.rand(2, 3, 8, 8), layers=["nope"], memory_format="channels_last",
                progress=False)  # fmt: skip
    bad = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(1, 2))
    conv_before = bad[0].weight.data_ptr()
    with pytest.raises(RuntimeError):
        capture(bad, torch.rand(2, 3, 8, 8), layers=["0"], memory_format="channels_last",
                progress=False)  # fmt: skip
    assert bad[0].weight.data_ptr() == conv_before and bad[0].weight.is_contiguous()
    assert {name: p.data_ptr() for name, p in net.named_parameters()} == before
