"""Stacking a batch of images that may differ in size, for the batched fetch of this package.

torch's DataLoader fetches a batch with ``dataset.__getitems__(indices)``
where the dataset has one (:func:`probes.fetch_items`). The wrappers of this
package (preprocessing, the image-statistics recorder, the demo's tensor
dataset) implement it, so a batch of same-sized images is resized, normalised
and measured in a few tensor ops instead of a dozen per image; images of
other sizes (an ImageFolder's) form groups of their own.

Example:
    >>> for positions, x in same_shape_groups([im for im, _ in items]):
    ...     x.shape                               # (len(positions), C, H, W)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["same_shape_groups"]


def same_shape_groups(images: Sequence[torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
    """The images stacked by shape, dtype and device: ``(positions, (B, ...) tensor)`` each.

    Groups come in the order of their first image; ``positions`` index ``images``
    in order, so ``stacked[j]`` is ``images[positions[j]]``.
    """
    groups: dict[tuple, list[int]] = {}
    for pos, image in enumerate(images):
        groups.setdefault((tuple(image.shape), image.dtype, image.device), []).append(pos)
    return [(pos, torch.stack([images[p] for p in pos])) for pos in groups.values()]
