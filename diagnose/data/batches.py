"""Reading a dataset a batch at a time: the batched half of torch's map-style protocol.

torch's DataLoader fetches a batch with ``dataset.__getitems__(indices)``
where the dataset has one (a list of items, as ``[dataset[i] for i in
indices]`` would give), else item by item. The wrappers of this package
(preprocessing, the image-statistics recorder, the demo's tensor dataset)
implement it, so a batch of same-sized images is resized, normalised and
measured in a few tensor ops instead of a dozen per image.

Example:
    >>> items = fetch_items(dataset, [0, 1, 2])   # what dataset[0..2] would give
    >>> for positions, x in same_shape_groups([im for im, _ in items]):
    ...     x.shape                               # (len(positions), C, H, W)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["fetch_items", "same_shape_groups"]


def fetch_items(dataset: Any, indices: Sequence[int]) -> list:
    """``[dataset[i] for i in indices]``, through ``dataset.__getitems__`` where it has one."""
    fetch = getattr(dataset, "__getitems__", None)
    if callable(fetch):
        return list(fetch(list(indices)))
    return [dataset[i] for i in indices]


def same_shape_groups(images: Sequence[torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
    """The images stacked by shape, dtype and device: ``(positions, (B, ...) tensor)`` each.

    Groups come in the order of their first image; ``positions`` index ``images``
    in order, so ``stacked[j]`` is ``images[positions[j]]``.
    """
    groups: dict[tuple, list[int]] = {}
    for pos, image in enumerate(images):
        groups.setdefault((tuple(image.shape), image.dtype, image.device), []).append(pos)
    return [(pos, torch.stack([images[p] for p in pos])) for pos in groups.values()]
