"""A tiny 3-block CNN shared by the training and forgetting tests.

Its subclasses return what other model families' forwards return, the
logits wrapped: a Hugging Face style dict, a detection-style tuple, an
output object with ``.logits``; and two forwards with no logits at all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "Tiny",
    "TinyDictNoTensor",
    "TinyReturnsDict",
    "TinyReturnsObject",
    "TinyReturnsString",
    "TinyReturnsTuple",
    "single_thread",
]


@contextlib.contextmanager
def single_thread():
    """Tiny convolutions on a busy 2-core machine run ~100x slower with 2 threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _block(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Tiny(nn.Module):
    def __init__(self, classes=4, skip=False, dropout=False):
        super().__init__()
        self.block1, self.block2, self.block3 = _block(1, 4), _block(4, 8), _block(8, 8)
        if dropout:
            self.block1.append(nn.Dropout(0.2))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, classes)
        self.skip = skip

    def forward(self, x):
        h1 = self.block1(x)
        h = self.pool(self.block3(self.block2(h1)))
        if self.skip:  # block1's output also reaches the head: not a chain
            h = h + self.pool(h1).mean(1, keepdim=True)
        return self.head(h)


class TinyReturnsDict(Tiny):
    """``{"aux": ..., "logits": ...}``: another tensor comes first, as ``loss`` does in HF."""

    def forward(self, x):
        return {"aux": torch.zeros(x.shape[0], 3, device=x.device), "logits": super().forward(x)}


class TinyReturnsTuple(Tiny):
    """Detection style: ``(logits, boxes)``."""

    def forward(self, x):
        return super().forward(x), torch.zeros(x.shape[0], 5, 4, device=x.device)


@dataclass
class TinyOutput:
    hidden: torch.Tensor
    logits: torch.Tensor


class TinyReturnsObject(Tiny):
    """An output object with a ``.logits`` attribute (and another tensor before it)."""

    def forward(self, x):
        return TinyOutput(
            hidden=torch.zeros(x.shape[0], 2, device=x.device), logits=super().forward(x)
        )


class TinyReturnsString(Tiny):
    def forward(self, x):
        super().forward(x)
        return "not logits"


class TinyDictNoTensor(Tiny):
    def forward(self, x):
        super().forward(x)
        return {"label": "cat", "score": 0.5}
