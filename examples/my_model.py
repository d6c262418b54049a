"""Your own model, given to diagnose as ``--model my_model:build``.

Any importable ``module:function`` returning an ``nn.Module`` works. diagnose
finds its blocks (here the children ``stem``, ``stage1``..``stage3``) and its
source head (the last ``nn.Linear``) automatically; pass ``--layers`` and
``--head`` to choose others.
"""

from __future__ import annotations

from torch import nn


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallNet(nn.Module):
    """A 3-channel CNN with three stages and a 10-class head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _stage(3, 16)
        self.stage1 = _stage(16, 32)
        self.stage2 = _stage(32, 64)
        self.stage3 = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def build() -> nn.Module:
    """Entry point for ``--model my_model:build`` (load trained weights with --weights)."""
    return SmallNet()
