"""Every progress bar's total is the work it counts: it ends at n == total, never past it."""

from __future__ import annotations

import pytest
import torch
import tqdm.auto
from tiny_models import Tiny, single_thread

from diagnose.core.names import STRATEGY_NAMES
from diagnose.training.config import TrainConfig
from diagnose.training.runner import TargetData, run_strategy
from diagnose.training.strategies import plan
from diagnose.training.strategy_run import planned_epochs

BLOCKS = ["block1", "block2", "block3"]


class _Recorder(tqdm.auto.tqdm):
    """tqdm that keeps every bar it made and the highest count each reached."""

    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peak = 0
        _Recorder.made.append(self)

    def update(self, n=1):
        out = super().update(n)
        self.peak = max(self.peak, self.n)
        return out


@pytest.fixture
def bars(monkeypatch):
    _Recorder.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", _Recorder)  # StrategyRun imports it at run time
    with single_thread():
        yield _Recorder.made


def _data():
    gen = torch.Generator().manual_seed(2)

    def images(n):
        y = torch.arange(n) % 3
        return torch.randn(n, 1, 8, 8, generator=gen) + y.view(-1, 1, 1, 1), y

    return TargetData(*images(48), *images(24), *images(24), num_classes=3)


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("feature_extraction", 7),  # max(epochs, lp_epochs) head epochs on cached features
        ("lp_ft", 7 + 2),  # the probe's epochs, then the fine-tuning's
        ("full_low_lr", 2),
        ("gradual_unfreeze", 2),  # its stages split the shared budget
        ("scratch", 2),
    ],
)
def test_strategy_bar_total_is_the_epochs_it_runs(bars, name, want):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, batch_size=16, head_lr=0.05, lp_epochs=7)
    entry = run_strategy(
        name, Tiny().eval(), head="head", blocks=BLOCKS, data=_data(), tracker=None,
        config=cfg, device=torch.device("cpu"), progress=True,
    )  # fmt: skip
    assert entry["status"] == "ok"
    (bar,) = [b for b in bars if b.desc.startswith(name)]
    assert bar.total == want
    assert bar.peak == bar.total  # it ran exactly its total: not 0/3 then on to 50


def test_planned_epochs_covers_every_strategy():
    cfg = TrainConfig(epochs=3, lp_epochs=11)
    got = {n: planned_epochs(plan(n, BLOCKS, cfg), cfg.epochs) for n in STRATEGY_NAMES}
    assert got == {
        "feature_extraction": 11,
        "partial": 3,
        "full_low_lr": 3,
        "discriminative": 3,
        "gradual_unfreeze": 3,
        "lp_ft": 14,
        "l2_sp": 3,
        "bitfit": 3,
        "lora": 3,
        "scratch": 3,
    }
