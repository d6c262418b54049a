"""The memory layout rule: from the architecture, never a timing; checked once, on a copy."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from diagnose.models import choose_layout, forget_layouts
from diagnose.models import memory_layout as ml

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh():
    forget_layouts()
    yield
    forget_layouts()


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


def test_the_rule_names_why_for_what_cannot_run_channels_last():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    assert "not 4-D" in choose_layout(mlp, torch.randn(2, 16), CPU, training=True).reason
    assert "no 2-D convolutions" in choose_layout(mlp, torch.randn(2, 1, 4, 4), CPU,
                                                  training=False).reason  # fmt: skip
    lazy = nn.Sequential(nn.LazyConv2d(4, 3))
    assert "lazy" in choose_layout(lazy, torch.randn(2, 3, 8, 8), CPU, training=False).reason
    tokens = torch.randint(0, 5, (2, 3, 8, 8))
    assert choose_layout(_resnet(), tokens, CPU, training=False).name == "contiguous"


@pytest.mark.parametrize("training", [False, True])
def test_a_convolutional_network_runs_channels_last_and_is_left_unchanged(training):
    net = _resnet().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    layout = choose_layout(net, torch.randn(4, 3, 32, 32), CPU, training=training)
    assert layout.name == "channels_last" and layout.memory_format == torch.channels_last
    assert layout.to_dict() == {"memory_format": "channels_last", "reason": layout.reason}
    assert net.training and all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous(), k


@pytest.mark.parametrize(
    "net, why", [(ViewNet(), "raised"), (StridedNet(), "differed")], ids=["view", "strides"]
)
def test_a_layout_dependent_forward_keeps_nchw(net, why):
    layout = choose_layout(net, torch.rand(4, 3, 8, 8), CPU, training=False)
    assert layout.name == "contiguous" and why in layout.reason and "kept NCHW" in layout.reason


def test_the_check_runs_once_per_architecture_and_shape_whatever_the_threads(monkeypatch):
    calls = []
    real = ml._check

    def counted(*args, **kwargs):
        calls.append(args[1].shape[1:])
        return real(*args, **kwargs)

    monkeypatch.setattr(ml, "_check", counted)
    threads = torch.get_num_threads()
    x = torch.randn(2, 3, 32, 32)
    try:
        first = choose_layout(_resnet(), x, CPU, training=False)
        torch.set_num_threads(1)
        again = choose_layout(_resnet(), torch.randn(8, 3, 32, 32), CPU, training=False)
    finally:
        torch.set_num_threads(threads)
    assert first == again and len(calls) == 1
    choose_layout(_resnet(), torch.randn(2, 3, 48, 48), CPU, training=False)  # another shape
    assert len(calls) == 2


def test_a_run_records_its_layout_and_trains_in_it():
    from diagnose.training import TargetData, TrainConfig, run_strategy

    torch.manual_seed(0)
    x = torch.randn(24, 3, 32, 32)
    y = torch.arange(24) % 4
    data = TargetData(x[:12], y[:12], x[12:18], y[12:18], x[18:], y[18:], 4)
    entry = run_strategy(
        "full_low_lr", _resnet(), head="fc", blocks=["layer3", "layer4"], data=data,
        tracker=None, config=TrainConfig(epochs=1, batch_size=6), device=CPU, progress=False,
    )  # fmt: skip
    assert entry["status"] == "ok"
    assert entry["config"]["memory_format"] == {
        "memory_format": "channels_last", "reason": "CPU: oneDNN convolutions"
    }  # fmt: skip
