"""FLOP counting, peak memory, trainable parameters and the device factories."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import nn

from diagnose.core import device as _device
from diagnose.training.cost import (
    PeakMemory,
    count_train_step_flops,
    current_rss_bytes,
    trainable_params,
)


def test_linear_flops_known_values():
    n, d_in, d_out = 8, 5, 3
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(n, d_in)
    with torch.no_grad():
        assert count_train_step_flops(lambda: layer(x)) == 2 * n * d_in * d_out
    # Forward + backward with respect to the weight only (input needs no grad): 2x forward.
    assert count_train_step_flops(lambda: layer(x).sum().backward()) == 2 * (2 * n * d_in * d_out)
    # Input gradient too: backward is twice the forward.
    xg = x.clone().requires_grad_(True)
    assert count_train_step_flops(lambda: layer(xg).sum().backward()) == 3 * (2 * n * d_in * d_out)
    assert layer.weight.grad is not None  # the counted call is a real call


def test_conv_flops_known_value():
    conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
    x = torch.randn(3, 2, 6, 6)
    with torch.no_grad():
        flops = count_train_step_flops(lambda: conv(x))
    assert flops == 2 * 3 * 4 * 6 * 6 * 2 * 3 * 3


@pytest.mark.parametrize(
    ("c_in", "c_out", "groups", "stride"),
    [(6, 6, 6, 1), (6, 12, 3, 2), (4, 8, 1, 1)],
    ids=["depthwise", "grouped-strided", "dense"],
)
def test_conv_backward_counts_each_gradient_as_the_forward(c_in, c_out, groups, stride):
    # Multiply-adds of a convolution, the published formula: every output element takes
    # k*k*(C_in / groups) of them (2 FLOPs each). Its input gradient and weight gradient
    # take as many again each; torch's own formula leaves groups out of the weight
    # gradient (pytorch/pytorch#183405), counting a depthwise layer C times over.
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False)
    x = torch.randn(2, c_in, 8, 8, requires_grad=True)
    out_numel = conv(x).numel()
    forward = 2 * out_numel * 3 * 3 * (c_in // groups)
    assert count_train_step_flops(lambda: conv(x).sum().backward()) == 3 * forward
    x.requires_grad_(False)  # a first layer: no input gradient, only the weight's
    assert count_train_step_flops(lambda: conv(x).sum().backward()) == 2 * forward


def test_a_transposed_grouped_convolution_backward_counts_as_its_forward_twice_more():
    # A transposed convolution visits every *input* position with every weight element.
    conv = nn.ConvTranspose2d(6, 12, 3, stride=2, groups=3, bias=False)
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    forward = 2 * 2 * 5 * 5 * (3 * 3) * 6 * (12 // 3)
    with torch.no_grad():
        assert count_train_step_flops(lambda: conv(x)) == forward
    assert count_train_step_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_trainable_params_counts_requires_grad_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2))
    assert trainable_params(model) == 20 + 10
    model[3].weight.requires_grad_(False)
    assert trainable_params(model) == 20 + 2


def test_peak_memory_cpu_is_process_rss():
    start = current_rss_bytes()
    with PeakMemory(torch.device("cpu"), interval=0.01) as mem:
        big = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        big += 1
        del big
    assert mem.kind == "process_rss" and mem.source == "vmrss_sampled"
    assert isinstance(mem.peak_bytes, int) and mem.peak_bytes > 0
    if start is not None:
        assert mem.peak_bytes >= start
    assert mem._thread is not None and not mem._thread.is_alive()


def test_peak_memory_falls_back_to_getrusage(monkeypatch):
    import diagnose.training.cost as cost

    monkeypatch.setattr(cost, "current_rss_bytes", lambda: None)
    with PeakMemory("cpu") as mem:
        pass
    assert mem.source == "getrusage_maxrss" and mem.peak_bytes > 0


CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_device_factories_cpu():
    assert isinstance(_device.autocast_context(CPU), contextlib.nullcontext)
    assert _device.autocast_dtype(CPU) is None
    assert _device.memory_format(CPU) == torch.contiguous_format
    assert _device.loader_kwargs(CPU) == {"num_workers": 0, "pin_memory": False}
    assert _device.configure_backends(CPU) == {}
    assert _device.describe(CPU) == {
        "device": "cpu",
        "autocast": None,
        "channels_last": False,
        "pin_memory": False,
    }
    x = _device.to_device(torch.randn(2, 3, 4, 4), CPU)
    assert x.is_contiguous()


def test_device_factories_cuda_branch():
    assert _device.is_cuda(CUDA) and _device.is_cuda("cuda:1") and not _device.is_cuda(CPU)
    if not torch.cuda.is_available():
        assert _device.autocast_dtype(CUDA) == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on a CPU-only machine
        ctx = _device.autocast_context(CUDA)
    if _device.autocast_dtype(CUDA) is not None:
        assert isinstance(ctx, torch.autocast)
        assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert _device.memory_format(CUDA) == torch.channels_last
    kw = _device.loader_kwargs(CUDA, num_workers=3)
    assert kw == {"num_workers": 3, "pin_memory": True, "persistent_workers": True}
    assert 1 <= _device.loader_kwargs(CUDA)["num_workers"] <= 4
    assert _device.loader_kwargs(CUDA, num_workers=0)["persistent_workers"] is False
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        assert _device.configure_backends(CUDA) == {"cudnn_benchmark": True, "tf32": True}
        assert torch.backends.cudnn.benchmark is True
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        ) = saved
    desc = _device.describe(CUDA)
    assert desc["channels_last"] is True and desc["pin_memory"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_peak_memory_cuda():
    dev = torch.device("cuda")
    with PeakMemory(dev) as mem:
        x = torch.ones(1024, 1024, device=dev)
        del x
    assert mem.kind == "cuda_allocated" and mem.peak_bytes >= 4 * 1024 * 1024
