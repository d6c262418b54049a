"""Tests of the channels-last layout of inference passes (probes._memory_format, capture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import probes._memory_format as mf
from probes import (
    FormatChoice,
    PassLayout,
    SwappedWeights,
    capture,
    forget_memory_formats,
    in_format,
    memory_format_applied,
    outputs_agree,
    time_memory_formats,
)

CL = torch.channels_last


@pytest.fixture(autouse=True)
def _fresh_decisions():
    forget_memory_formats()
    yield
    forget_memory_formats()


def _f32_atol(ref: np.ndarray) -> float:
    """Float32, another convolution algorithm (NHWC kernels sum in another order): 1e-5 of
    the largest |value| is ~100 float32 ulps of it, far above the ~1e-6 seen on resnet18."""
    return 1e-5 * max(1.0, float(np.abs(ref).max(initial=0.0)))


class ViewNet(nn.Module):
    """Calls .view on a conv map, which fails on a channels-last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(self.conv(x).view(x.shape[0], -1))


class StridedNet(nn.Module):
    """Reads a conv map through its raw strides: the result depends on the layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.as_strided((y.shape[0], 8), (y.stride(0), 1))


def _resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


def _decide(monkeypatch, channels_last: bool) -> None:
    """Machine-independent trials: the margin channels-last must beat NCHW by is set so
    that any measured times choose it (or never do)."""
    monkeypatch.setattr(mf, "_MARGIN", 1e12 if channels_last else 0.0)


def _plan(model, x, memory_format="auto", n_batches=None) -> PassLayout:
    layout = PassLayout(model, memory_format, n_batches)
    try:
        with torch.no_grad():
            model(layout.start(x))
        layout.done(x.shape[0])
    finally:
        layout.close()
    return layout


# ----------------------------------------------------------------------------- planning


def test_plan_follows_the_request_and_what_can_apply():
    net, x = _resnet(), torch.rand(4, 3, 32, 32)
    assert _plan(net, x, "contiguous").choice.memory_format == "contiguous"
    forced = _plan(net, x, "channels_last")
    assert forced.choice.memory_format == "channels_last" and forced.layout(0) == "channels_last"
    assert not net.conv1.weight.is_contiguous(memory_format=CL)  # put back
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    tokens = PassLayout(mlp, "channels_last")
    assert tokens.start(torch.rand(4, 3072)).is_contiguous()  # not a 4-D image batch
    assert tokens.choice.memory_format == "contiguous"
    plan = _plan(mlp, x, "auto", 100).choice
    assert plan.memory_format == "contiguous" and "no 4-D weights" in plan.reason
    lazy = nn.Sequential(nn.LazyConv2d(4, 3))
    assert "lazy" in _plan(lazy, x, "auto", 100).choice.reason
    trial = _plan(net, x, "auto", 100)
    assert [trial.layout(i) for i in range(5)] == [
        "contiguous", "channels_last", "channels_last", "contiguous", "contiguous"
    ]  # fmt: skip
    assert "ended before" in trial.choice.reason  # one batch of a four-batch trial


def test_a_short_pass_runs_no_trial_and_keeps_nothing():
    net, x = _resnet(), torch.rand(4, 3, 32, 32)
    short = _plan(net, x, "auto", 5)
    assert short.choice.memory_format == "contiguous" and "too short" in short.choice.reason
    assert [short.layout(i) for i in range(5)] == ["contiguous"] * 5
    assert not mf._decisions


def test_a_bad_request_is_one_line_naming_the_parameter():
    with pytest.raises(ValueError, match="'memory_format'.*'channels_last'"):
        PassLayout(_resnet(), "nhwc")
    with pytest.raises(ValueError, match="'memory_format'"):
        capture(_resnet(), torch.rand(2, 3, 8, 8), memory_format="NHWC", progress=False)


# ----------------------------------------------------------------------------- the weights


def test_weights_are_swapped_inside_and_the_original_tensors_put_back():
    net = _resnet()
    before = {name: (p.data_ptr(), p.stride()) for name, p in net.named_parameters()}
    mean_before = net.bn1.running_mean.data_ptr()
    with memory_format_applied(net, FormatChoice("channels_last", "test")):
        assert net.conv1.weight.is_contiguous(memory_format=CL)
        assert not net.conv1.weight.is_contiguous()
    after = {name: (p.data_ptr(), p.stride()) for name, p in net.named_parameters()}
    assert after == before and net.bn1.running_mean.data_ptr() == mean_before
    with pytest.raises(RuntimeError, match="boom"):
        with memory_format_applied(net, FormatChoice("channels_last", "test")):
            raise RuntimeError("boom")
    assert {name: (p.data_ptr(), p.stride()) for name, p in net.named_parameters()} == before
    with memory_format_applied(net, FormatChoice("contiguous", "test")):
        assert net.conv1.weight.is_contiguous()


def test_swapped_weights_apply_once_and_restore_once():
    net = _resnet()
    w = net.conv1.weight
    original = w.data_ptr()  # .data is a new alias on every access: compare storage
    weights = SwappedWeights(net)
    weights.apply(FormatChoice("contiguous", "t"))
    assert not weights.applied and w.data_ptr() == original
    weights.apply(FormatChoice("channels_last", "t"))
    swapped = w.data_ptr()
    assert swapped != original and w.is_contiguous(memory_format=CL)
    weights.apply(FormatChoice("channels_last", "t"))  # a second apply copies nothing
    assert weights.applied and w.data_ptr() == swapped
    weights.restore()
    weights.restore()
    assert not weights.applied and w.data_ptr() == original and w.is_contiguous()


def test_in_format_converts_only_four_d_inputs_for_a_channels_last_choice():
    x = torch.rand(2, 3, 4, 4)
    assert in_format(x, FormatChoice("channels_last", "t")).is_contiguous(memory_format=CL)
    assert in_format(x, FormatChoice("contiguous", "t")) is x
    assert in_format(x, None) is x
    v = torch.rand(2, 3)
    assert in_format(v, FormatChoice("channels_last", "t")) is v


def test_outputs_agree_is_a_semantic_check_not_a_rounding_one():
    a = torch.randn(8, 5)
    assert outputs_agree([a], [a * (1 + 1e-4)])
    assert not outputs_agree([a], [a.flip(0)])
    assert not outputs_agree([a], [a[:4]])
    assert not outputs_agree([a], [torch.full_like(a, float("nan"))])
    assert not outputs_agree([a], [])


# ----------------------------------------------------------------------------- capture


def test_channels_last_capture_matches_nchw_and_leaves_the_model_as_it_was():
    net, x = _resnet(), torch.rand(24, 3, 32, 32)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ref = capture(net, x, batch_size=8, memory_format="contiguous", progress=False)
    got = capture(net, x, batch_size=8, memory_format="channels_last", progress=False)
    assert got.memory_format["memory_format"] == "channels_last"
    assert ref.memory_format == {"memory_format": "contiguous", "reason": "requested",
                                 "speedup": None}  # fmt: skip
    for name in ref.layers:
        np.testing.assert_allclose(
            got.features[name], ref.features[name], rtol=0, atol=_f32_atol(ref.features[name])
        )
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous(), k


def _auto_and_nchw(monkeypatch, channels_last: bool):
    """A resnet18, its NCHW capture and its first "auto" one (10 batches of 4), the trial's
    decision set by :func:`_decide`."""
    _decide(monkeypatch, channels_last)
    net, x = _resnet(), torch.rand(40, 3, 32, 32)
    ref = capture(net, x, batch_size=4, memory_format="contiguous", progress=False)
    return net, x, ref, capture(net, x, batch_size=4, progress=False)


def test_auto_runs_the_trial_sequence_in_every_pass_and_keeps_the_decision(monkeypatch):
    net, x, ref, first = _auto_and_nchw(monkeypatch, channels_last=True)
    assert first.memory_format["memory_format"] == "channels_last"
    assert first.memory_format["reason"].startswith("measured: a batch of 4 took")
    again = capture(net, x, batch_size=4, progress=False)
    assert again.memory_format == first.memory_format  # kept: no second trial
    for name in ref.layers:
        assert first.features[name].shape == (40, ref.features[name].shape[1])  # no extra rows
        # Batches 1 and 4 ran NCHW in both passes, on the same code: exactly equal.
        for rows in (slice(0, 4), slice(12, 16)):
            np.testing.assert_array_equal(first.features[name][rows], ref.features[name][rows])
        np.testing.assert_allclose(
            first.features[name], ref.features[name], rtol=0, atol=_f32_atol(ref.features[name])
        )
        # The same process, the same layout for every batch: identical run to run.
        np.testing.assert_array_equal(again.features[name], first.features[name])
    assert net.conv1.weight.is_contiguous()


def test_auto_keeps_nchw_when_channels_last_is_not_faster(monkeypatch):
    _, _, ref, feats = _auto_and_nchw(monkeypatch, channels_last=False)
    assert feats.memory_format["memory_format"] == "contiguous"
    assert "kept NCHW" in feats.memory_format["reason"]
    for name in ref.layers:  # from batch 5 on, NCHW as the reference
        np.testing.assert_array_equal(feats.features[name][16:], ref.features[name][16:])


@pytest.mark.parametrize(
    ("net", "reason"),
    [(ViewNet(), "raised RuntimeError"), (StridedNet(), "outputs differed")],
)
def test_a_layout_dependent_forward_never_runs_channels_last(monkeypatch, net, reason):
    _decide(monkeypatch, channels_last=True)
    net.eval()
    x = torch.rand(40, 3, 8, 8)
    for _ in range(2):  # the second pass reads the kept refusal
        feats = capture(net, x, layers=["conv"], batch_size=4, keep_output=True, progress=False)
        assert feats.memory_format["memory_format"] == "contiguous"
        assert reason in feats.memory_format["reason"]
    ref = capture(net, x, layers=["conv"], batch_size=4, keep_output=True,
                  memory_format="contiguous", progress=False)  # fmt: skip
    np.testing.assert_array_equal(feats.output, ref.output)  # every batch ran NCHW
    assert net.conv.weight.is_contiguous()


# ------------------------------------------------------------------ one batch, timed on demand


@pytest.mark.parametrize("channels_last", [True, False])
def test_time_memory_formats_times_both_layouts_and_leaves_the_model(monkeypatch, channels_last):
    _decide(monkeypatch, channels_last)
    net, x = _resnet(), torch.rand(6, 3, 32, 32)
    net.train()
    ptr = net.conv1.weight.data_ptr()
    choice = time_memory_formats(net, x)
    assert choice.memory_format == ("channels_last" if channels_last else "contiguous")
    assert choice.reason.startswith("measured: a batch of 6 took")
    assert "(best of two each)" in choice.reason and choice.speedup > 0
    assert net.training and all(m.training for m in net.modules())  # flags restored
    assert net.conv1.weight.data_ptr() == ptr and net.conv1.weight.is_contiguous()
    # Kept for the process with PassLayout's decisions (architecture and input shape): a
    # second call and a capture of the model read it, even where timing would now decide
    # otherwise; forgetting the decisions times again.
    _decide(monkeypatch, not channels_last)
    assert time_memory_formats(net, x) is choice
    assert time_memory_formats(net, torch.rand(5, 3, 32, 32)) is choice  # another batch size
    feats = capture(net.eval(), torch.rand(24, 3, 32, 32), batch_size=4, progress=False)
    assert feats.memory_format == choice.to_dict()
    net.train()
    forget_memory_formats()
    assert time_memory_formats(net, x).channels_last is not channels_last


@pytest.mark.parametrize(
    ("net", "x", "reason"),
    [
        (ViewNet(), torch.rand(4, 3, 8, 8), "raised RuntimeError"),
        (StridedNet(), torch.rand(4, 3, 8, 8), "outputs differed"),
        (nn.Linear(3, 2), torch.rand(4, 3), "not 4-D floating images"),
        (nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), torch.rand(4, 3, 4, 4), "no 4-D weights"),
    ],
)
def test_time_memory_formats_refuses_what_cannot_run_channels_last(monkeypatch, net, x, reason):
    _decide(monkeypatch, channels_last=True)
    choice = time_memory_formats(net.eval(), x)
    assert choice.memory_format == "contiguous" and choice.speedup is None
    assert reason in choice.reason
