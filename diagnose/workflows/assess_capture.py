"""The assessment's capture pass: every block's pooled features, on target and source.

The target pass runs the pretrained model and its random-init control on the
same batches (one read of the images for both); the source pass runs the
pretrained model alone. A ``max_memory`` budget is shared between the passes,
and an image that fails to decode is skipped and dropped from the splits.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

import probes
from diagnose.core import UsageError
from diagnose.data import (
    Domain,
    ImageStats,
    Preprocessing,
    drop_positions,
    prepared_dataset,
    restricted_splits,
    subsample,
)
from diagnose.models import Layout, LoadedModel, choose_layout, expected_size_hint, random_init_copy

__all__ = [
    "capture_domains",
    "capture_layout",
    "memory_share",
]


def memory_share(max_memory: int | None, src, tgt) -> int | None:
    """Each capture pass's share of ``max_memory`` (bytes; None: no bound)."""
    if max_memory is None:
        return None
    return max(1, max_memory // ((src is not None) + (tgt is not None)))


# The warnings of capture passes shown again, per place: the "default" filter's once.
_SHOWN: dict = {}


class _Pair(nn.Module):
    """Runs the pretrained model and its random-init control on the same batch."""

    def __init__(self, pretrained: nn.Module, control: nn.Module):
        super().__init__()
        self.pretrained, self.control = pretrained, control

    def forward(self, x):
        self.control(x)
        return self.pretrained(x)


def _capture(loaded: LoadedModel, prep, what: str, model: nn.Module, *args, **kwargs):
    """``probes.capture``, with a model that rejects the images' shape reported as bad input.

    What the pass skipped is in its ``warnings``, which the results keep (and the CLI
    prints unless ``--quiet``): the same note is not also shown as a Python warning.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cap = probes.capture(model, *args, **kwargs)
    except RuntimeError as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        c, (h, w) = prep.channels, prep.image_size
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(
            f"model {loaded.name} failed on the {what} images, given as {c}x{h}x{w} "
            f"({type(exc).__name__}: {first}); ",
            *expected_size_hint(loaded.model, c),
            ".",
        ) from exc
    for w in caught:
        if str(w.message) not in cap.warnings:  # e.g. a layer the forward never runs
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, registry=_SHOWN)
    return cap


def capture_layout(
    net: nn.Module, prep: Preprocessing, device: torch.device, batch_size: int
) -> Layout:
    """The layout of the capture passes of ``net`` on batches of images as ``prep`` makes
    them (:func:`diagnose.models.choose_layout`, on a batch of seeded random images)."""
    (h, w), g = prep.image_size, torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, prep.channels, h, w, generator=g)
    return choose_layout(net, x, device, training=False)


def capture_domains(
    loaded: LoadedModel,
    prep: Preprocessing,
    src: Domain | None,
    tgt: Domain | None,
    layer_names: list[str],
    *,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    device: torch.device,
    progress: bool,
    max_memory: int | None,
    pool: str,
    layout: Layout,
) -> tuple[dict[str, Any], dict[str, ImageStats], dict[str, np.ndarray], dict[str, dict | None]]:
    """``(captured, image stats, used image indices, splits)`` per domain ("target", "source").

    Target features are keyed ``pretrained.<block>`` and ``control.<block>``;
    source features by the block names. ``max_memory`` (bytes, None: no bound)
    is split evenly between the passes that run.
    """
    net, dev, has_head = loaded.model, device, loaded.head is not None
    share = memory_share(max_memory, src, tgt)
    captured: dict[str, Any] = {}
    stats: dict[str, ImageStats] = {}
    used: dict[str, np.ndarray] = {}
    splits: dict[str, dict | None] = {}
    passes = []
    if tgt is not None:
        # The target pass runs the random-init control on the same batches.
        pair = _Pair(net, random_init_copy(net, seed=seed).to(dev))
        names = [f"pretrained.{n}" for n in layer_names] + [f"control.{n}" for n in layer_names]
        passes.append(("target", tgt, pair, names))
    if src is not None:
        passes.append(("source", src, net, layer_names))
    for what, domain, model, names in passes:
        used[what] = subsample(domain, max_samples, seed)
        splits[what] = restricted_splits(domain, used[what], seed)
        stats[what] = ImageStats()
        data = prepared_dataset(domain, used[what], prep, stats[what])
        captured[what] = _capture(
            loaded,
            prep,
            what,
            model,
            data,
            names,
            batch_size=batch_size,
            device=dev,
            keep_output=has_head,
            progress=progress,
            desc=f"capture {what}",
            max_memory=share,
            skip_unreadable=True,
            token_pool=pool,
            memory_format=layout.name,
        )
        used[what], splits[what] = drop_positions(used[what], splits[what], captured[what].skipped)
    return captured, stats, used, splits
