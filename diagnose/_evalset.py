"""Fixed evaluation images shared by compare and audit.

Both pick the same held-out source images (the source test split, a seeded
choice of ``n``), so an audit of a ``--save-checkpoints`` file measures on
exactly the images the comparison tracked forgetting on.
"""

from __future__ import annotations

import numpy as np
import torch

from diagnose._prep import Preprocessing, prepared_dataset
from diagnose.data import Domain
from diagnose.imagestats import ImageStats
from diagnose.models import LoadedModel

__all__ = ["MAX_TENSOR_BYTES", "materialize", "pick_eval", "source_eval_set"]

MAX_TENSOR_BYTES = 4 * 1024**3


def pick_eval(pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``min(n, len(pool))`` indices of ``pool``, a seeded choice, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


def materialize(
    domain: Domain, indices, prep: Preprocessing, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """The domain's images at ``indices`` as the model sees them, as (x, y) tensors."""
    dataset = prepared_dataset(domain, indices, prep, ImageStats())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    xs, ys = [], []
    total = 0
    for x, y in loader:
        total += x.numel() * 4
        if total > MAX_TENSOR_BYTES:
            raise ValueError(
                f"the preprocessed images of {domain.name} exceed 4 GiB in memory; pass "
                "--max-samples N or a smaller --image-size."
            )
        xs.append(x.float())
        ys.append(torch.as_tensor(y, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def source_eval_set(
    src: Domain, loaded: LoadedModel, prep: Preprocessing, *, n: int, seed: int, warnings: list[str]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Held-out source images and, when they match the head's classes, their labels."""
    split = src.splits(seed)
    pool = split["test"] if len(split["test"]) else np.arange(len(src.dataset))
    x, y = materialize(src, pick_eval(pool, n, seed), prep)
    label_match = src.labels is not None and src.classes == loaded.source_classes
    if src.labels is not None and not label_match:
        warnings.append(
            "Source classes do not match the model's head classes: forgetting is measured "
            "label-free (agreement and CKA) only."
        )
    return x, (y if label_match else None)
