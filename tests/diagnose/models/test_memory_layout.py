"""The memory layout: measured once per architecture and shape, kept on disk, never a timing
again; checked and timed on a copy."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from diagnose.models import choose_layout, forget_layouts, layouts_file
from diagnose.models import memory_layout as ml

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAGNOSE_CACHE_DIR", str(tmp_path))
    forget_layouts()
    yield
    forget_layouts()


def _faster(monkeypatch, channels_last: bool) -> None:
    """Machine-independent trials: the margin makes any measured times choose channels-last
    (or never)."""
    monkeypatch.setattr(ml, "MARGIN", 1e12 if channels_last else 0.0)


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
    return torchvision.models.resnet18(num_classes=5)


def test_what_cannot_run_channels_last_says_why_without_a_trial():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    assert "not 4-D" in choose_layout(mlp, torch.randn(2, 16), CPU, training=True).reason
    no_conv = choose_layout(mlp, torch.randn(2, 1, 4, 4), CPU, training=False)
    assert "no 2-D convolutions" in no_conv.reason
    lazy = nn.Sequential(nn.LazyConv2d(4, 3))
    assert "lazy" in choose_layout(lazy, torch.randn(2, 3, 8, 8), CPU, training=False).reason
    tokens = torch.randint(0, 5, (2, 3, 8, 8))
    assert choose_layout(_resnet(), tokens, CPU, training=False).name == "contiguous"
    assert not layouts_file().exists()  # nothing measured, nothing kept


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("faster", [True, False])
def test_the_faster_layout_is_measured_on_a_copy_and_kept_on_disk(monkeypatch, training, faster):
    _faster(monkeypatch, faster)
    net = _resnet().train()
    for p in net.layer1.parameters():
        p.requires_grad_(False)  # a frozen block still times its backward on the copy
    state = {k: v.clone() for k, v in net.state_dict().items()}
    layout = choose_layout(net, torch.randn(4, 3, 32, 32), CPU, training=training)
    assert layout.name == ("channels_last" if faster else "contiguous")
    assert layout.reason.startswith("measured once on this machine")
    assert layout.to_dict() == {"memory_format": layout.name, "reason": layout.reason}
    assert net.training and all(p.grad is None for p in net.parameters())
    assert not any(p.requires_grad for p in net.layer1.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous(), k
    (kept,) = json.loads(layouts_file().read_text()).values()
    assert kept == layout.to_dict()


@pytest.mark.parametrize(
    "net, why", [(ViewNet(), "raised"), (StridedNet(), "differed")], ids=["view", "strides"]
)
def test_a_layout_dependent_forward_keeps_nchw(monkeypatch, net, why):
    _faster(monkeypatch, True)
    layout = choose_layout(net, torch.rand(4, 3, 8, 8), CPU, training=False)
    assert layout.name == "contiguous" and why in layout.reason and "kept NCHW" in layout.reason


def test_measured_once_then_read_whatever_the_load_or_the_threads(monkeypatch):
    calls = []
    real = ml._measure

    def counted(*args, **kwargs):
        calls.append(args[1].shape[1:])
        return real(*args, **kwargs)

    monkeypatch.setattr(ml, "_measure", counted)
    _faster(monkeypatch, True)
    threads = torch.get_num_threads()
    first = choose_layout(_resnet(), torch.randn(4, 3, 32, 32), CPU, training=False)
    forget_layouts()  # as a new process: the decision comes from the file
    _faster(monkeypatch, False)  # a timing now would choose the other layout
    try:
        torch.set_num_threads(1)
        again = choose_layout(_resnet(), torch.randn(8, 3, 32, 32), CPU, training=False)
    finally:
        torch.set_num_threads(threads)
    assert first == again and len(calls) == 1
    choose_layout(_resnet(), torch.randn(2, 3, 48, 48), CPU, training=False)  # another shape
    choose_layout(_resnet(), torch.randn(2, 3, 32, 32), CPU, training=True)  # another pass
    assert len(calls) == 3 and len(json.loads(layouts_file().read_text())) == 3


def test_a_damaged_file_is_measured_again_and_rewritten(monkeypatch):
    _faster(monkeypatch, True)
    layouts_file().write_text("{not json")
    layout = choose_layout(_resnet(), torch.randn(2, 3, 32, 32), CPU, training=False)
    assert layout.name == "channels_last"
    assert list(json.loads(layouts_file().read_text()).values()) == [layout.to_dict()]


def test_a_run_records_its_layout_and_trains_in_it(monkeypatch):
    from diagnose.training import TargetData, TrainConfig, run_strategy

    _faster(monkeypatch, True)
    torch.manual_seed(0)
    x = torch.randn(24, 3, 32, 32)
    y = torch.arange(24) % 4
    data = TargetData(x[:12], y[:12], x[12:18], y[12:18], x[18:], y[18:], 4)
    entry = run_strategy(
        "full_low_lr", _resnet(), head="fc", blocks=["layer3", "layer4"], data=data,
        tracker=None, config=TrainConfig(epochs=1, batch_size=6), device=CPU, progress=False,
    )  # fmt: skip
    assert entry["status"] == "ok"
    recorded = entry["config"]["memory_format"]
    assert recorded["memory_format"] == "channels_last"
    assert recorded["reason"].startswith("measured once on this machine")
