"""The training layout: measured once per architecture and input shape, never changing a model."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from diagnose.training import layout as layout_module
from diagnose.training.layout import forget_train_layouts, train_layout
from tests.diagnose.tiny_models import Tiny, single_thread

CPU = torch.device("cpu")


def _batch(n=8, size=16, channels=1, classes=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, channels, size, size, generator=g), torch.arange(n) % classes


def test_a_trial_leaves_the_model_unchanged_and_is_kept_for_the_architecture(monkeypatch):
    forget_train_layouts()
    net = Tiny(classes=5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _batch()
    calls = []
    real = layout_module._measure
    monkeypatch.setattr(layout_module, "_measure", lambda *a: calls.append(1) or real(*a))
    with single_thread():
        first = train_layout(net, x, y, CPU)
        again = train_layout(Tiny(classes=5), x, y, CPU)  # same architecture and shape
        other = train_layout(net, *_batch(size=24), CPU)  # another input shape
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.is_contiguous() for p in net.parameters())
    assert first is again and len(calls) == 2 and other.reason.startswith("measured")
    assert first.name in ("contiguous", "channels_last") and first.speedup > 0
    assert first.to_dict()["memory_format"] == first.name


def test_the_faster_layout_is_chosen_by_the_margin(monkeypatch):
    forget_train_layouts()
    x, y = _batch()
    for nchw, cl, want in ((10.0, 5.0, "channels_last"), (10.0, 9.5, "contiguous")):
        forget_train_layouts()
        step = {"contiguous": nchw, "channels_last": cl}
        ticks, t = [], 0.0
        for name in layout_module._SEQUENCE:  # each step reads the clock at its start and end
            ticks += [t, t + step[name]]
            t += step[name]
        clock = iter(ticks)
        monkeypatch.setattr(layout_module.time, "perf_counter", lambda clock=clock: next(clock))
        with single_thread():
            choice = train_layout(Tiny(classes=5), x, y, CPU)
        # Channels-last must take at most LAYOUT_MARGIN of the NCHW time: 0.95 is a tie.
        assert choice.name == want and abs(choice.speedup - nchw / cl) < 1e-9
        assert choice.memory_format == (
            torch.channels_last if want == "channels_last" else torch.contiguous_format
        )


def test_no_trial_without_images_or_convolutions():
    forget_train_layouts()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    assert train_layout(mlp, torch.randn(4, 16), torch.arange(4), CPU).reason.startswith(
        "inputs are not 4-D"
    )
    assert (
        "no 4-D weights" in train_layout(mlp, torch.randn(4, 1, 4, 4), torch.arange(4), CPU).reason
    )
    assert train_layout(mlp, torch.randn(4, 16), torch.arange(4), torch.device("cuda")).name == (
        "channels_last"
    )


def test_a_run_records_its_layout_and_trains_in_it():
    from diagnose.training import TargetData, TrainConfig, run_strategy

    forget_train_layouts()
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4)
    x = torch.randn(24, 3, 32, 32)
    y = torch.arange(24) % 4
    data = TargetData(x[:12], y[:12], x[12:18], y[12:18], x[18:], y[18:], 4)
    with single_thread():
        entry = run_strategy(
            "full_low_lr", net, head="fc", blocks=["layer3", "layer4"], data=data,
            tracker=None, config=TrainConfig(epochs=1, batch_size=6), device=CPU,
            progress=False,
        )  # fmt: skip
    recorded = entry["config"]["memory_format"]
    assert recorded["memory_format"] in ("contiguous", "channels_last")
    assert recorded["reason"].startswith("measured")
    assert entry["status"] == "ok"


class _ViewsItsActivation(nn.Module):
    """A forward that only works on NCHW memory (``.view`` of a channels-last map fails)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.head(self.conv(x).view(x.shape[0], -1))


def test_a_model_whose_channels_last_step_fails_keeps_nchw():
    forget_train_layouts()
    x, y = _batch(size=8)
    with single_thread():
        choice = train_layout(_ViewsItsActivation(), x, y, CPU)
    assert choice.name == "contiguous" and "raised" in choice.reason


def test_run_layout_measures_under_a_new_head_and_names_a_bad_head():
    from diagnose.training.layout import run_layout

    forget_train_layouts()
    net = Tiny(classes=1000)  # the source head: the run trains a 5-way one
    x, y = _batch()
    with single_thread():
        choice = run_layout(net, "head", x, y, 5, CPU)
    assert choice.reason.startswith("measured") and net.head.out_features == 1000
    net.head = nn.Identity()
    assert "no int 'in_features'" in run_layout(net, "head", x, y, 5, CPU).reason
