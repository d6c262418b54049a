"""Fixed evaluation images shared by compare and audit, and images held as tensors.

Both pick the same held-out source images (the source test split, a seeded
choice of ``n``), so an audit of a ``--save-checkpoints`` file measures on
exactly the images the comparison tracked forgetting on.

:func:`materialize_readable` leaves out images that fail to decode and says
which (positions and a warning); :func:`materialize` lets the error through.
"""

from __future__ import annotations

import numpy as np
import torch

from diagnose.core import Arg, UsageError
from diagnose.data.domains import Domain, undecodable_note
from diagnose.data.imagestats import ImageStats
from diagnose.data.preprocessing import Preprocessing, prepared_dataset
from probes import skipping_batches

__all__ = [
    "MAX_TENSOR_BYTES",
    "materialize",
    "materialize_readable",
    "pick_eval",
]

MAX_TENSOR_BYTES = 4 * 1024**3


def pick_eval(pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``min(n, len(pool))`` indices of ``pool``, a seeded choice, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


def materialize(
    domain: Domain, indices, prep: Preprocessing, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """The domain's images at ``indices`` as the model sees them, as (x, y) tensors.

    An image that fails to decode raises its ``UndecodableImage`` (a
    ValueError); :func:`materialize_readable` leaves such images out instead.
    """
    dataset = prepared_dataset(domain, indices, prep, ImageStats())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return _stack(domain, loader)


def materialize_readable(
    domain: Domain, indices, prep: Preprocessing, warnings: list[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """:func:`materialize` without the images that fail to decode: ``(x, y, skipped)``.

    ``skipped`` holds the sorted positions in ``indices`` of the images left
    out (the rows of ``x`` are the others, in order; see
    :func:`diagnose.data.splits.drop_positions`); they are named in one warning
    appended to ``warnings``.
    """
    dataset = prepared_dataset(domain, indices, prep, ImageStats())
    skipped: list[tuple[int, str]] = []

    def readable():
        for batch, left_out in skipping_batches(dataset, batch_size):
            skipped.extend(left_out)
            if batch is not None:
                yield batch

    x, y = _stack(domain, readable())
    gone = np.sort(np.asarray([i for i, _ in skipped], dtype=np.int64))
    if skipped:
        warnings.extend(
            f"{domain.name}: {w}" for w in undecodable_note([why for _, why in skipped])
        )
        if len(gone) == len(dataset):
            raise ValueError(
                f"none of the {len(skipped)} images of {domain.name} needed here could be "
                f"decoded; the first: {skipped[0][1]}"
            )
    return x, y, gone


def _stack(domain: Domain, batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    total = 0
    for x, y in batches:
        total += x.numel() * 4
        if total > MAX_TENSOR_BYTES:
            raise UsageError(
                f"the preprocessed images of {domain.name} exceed 4 GiB in memory; pass ",
                Arg("max_samples", "N"), " or a smaller ", Arg("image_size"), ".",
            )  # fmt: skip
        xs.append(x.float())
        ys.append(torch.as_tensor(y, dtype=torch.long))
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(xs), torch.cat(ys)
