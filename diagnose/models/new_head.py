"""A headless backbone with a new classification head, so it can be fine-tuned like any classifier.

Self-supervised backbones (DINO, MAE, SimCLR-style) and feature extractors
shipped without their classifier are what people fine-tune most, and every
adaptation this toolkit races trains a new head anyway. :func:`with_new_head`
puts one on: the backbone's output, flattened per image, feeds a new
``nn.Linear`` named :data:`NEW_HEAD`. The backbone's modules keep their names
under :data:`BODY` (``layer4`` becomes ``body.layer4``); :func:`unprefixed`
maps them back for the user.

Example:
    >>> net = with_new_head(backbone, x[:1])      # backbone(x) -> (N, 512)
    >>> net.head.in_features, net.get_submodule("body.layer4") is backbone.layer4
    (512, True)
"""

from __future__ import annotations

import torch
from torch import nn

from probes import logits_of

__all__ = [
    "BODY",
    "NEW_HEAD",
    "NewHead",
    "unprefixed",
    "with_new_head",
]

BODY = "body"
NEW_HEAD = "head"


class NewHead(nn.Module):
    """``head(flatten(body(x)))``: a backbone and a new linear head on its output features."""

    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(logits_of(self.body(x)).flatten(1))


def with_new_head(backbone: nn.Module, example: torch.Tensor) -> NewHead:
    """``backbone`` (shared, not copied) with a new head sized by one forward of ``example``.

    Raises:
        ValueError: when the backbone's output per image is not a vector (after
            flattening a trailing 1 x 1 map, at most 8192 features): a spatial map
            needs pooling, which only the user's model knows how to do.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = logits_of(backbone(example[:1]))
    finally:
        backbone.train(was_training)
    width = int(out[0].numel())
    if out.dim() > 2 and any(s != 1 for s in out.shape[2:]) or width > 8192:
        raise ValueError(
            f"the backbone's output per image has shape {tuple(out.shape[1:])}, not a feature "
            "vector; return pooled features from its forward (or pass the model with its head)"
        )
    return NewHead(backbone, nn.Linear(width, 1))


def unprefixed(names: list[str]) -> list[str]:
    """Module names of a :class:`NewHead` as the backbone's own (``body.layer4`` -> ``layer4``)."""
    start = len(BODY) + 1
    return [n[start:] if n.startswith(BODY + ".") else n for n in names]
