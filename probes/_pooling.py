"""Reducing one layer's activation to one vector per example, on the fly.

Pooling happens inside the forward hook, on the model's device, so what is
kept per layer is (batch, D), never (batch, C, H, W).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["check_pool", "first_tensor", "pool_activation", "projection_matrix"]

POOL_NAMES = ("avg", "max", "avgmax")
TOKEN_POOL_NAMES = ("mean", "cls")


def check_pool(pool: Any, owner: str = "capture") -> None:
    """Raise the scikit-learn style error unless ``pool`` is a pool name or a positive int."""
    is_int = isinstance(pool, (int, np.integer)) and not isinstance(pool, bool)
    if (is_int and pool >= 1) or (isinstance(pool, str) and pool in POOL_NAMES):
        return
    shown = "{" + ", ".join(repr(c) for c in sorted(POOL_NAMES)) + "}"
    raise ValueError(
        f"The 'pool' parameter of {owner} must be one of {shown} or a positive int "
        f"(adaptive average pool to k x k). Got {pool!r} instead."
    )


def first_tensor(out: Any) -> torch.Tensor | None:
    """The tensor a module's output stands for: itself, or the first tensor in a tuple/list/dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def pool_activation(
    out: Any, *, layer: str, batch: int, pool: str | int, token_pool: str
) -> torch.Tensor:
    """Reduce a module output to a float32 (batch, D) tensor on the same device.

    - (N, C, H, W) conv maps: ``pool="avg"`` global average over H x W (D = C),
      ``"max"`` global max, ``"avgmax"`` both concatenated (D = 2C), an int k an
      adaptive average pool to k x k, flattened channel-major (D = C k²).
    - (N, T, D) token sequences: ``token_pool="mean"`` mean over tokens, ``"cls"``
      token 0. A (T, N, D) sequence (``batch_first=False`` attention) is
      recognised by its second dimension being the batch size.
    - (N, D) is kept; any other rank is flattened to (N, -1).

    The result may share memory with ``out`` (2-D case): the caller copies it.
    """
    x = first_tensor(out)
    if x is None:
        raise TypeError(
            f"Layer {layer!r} returned {type(out).__name__}, which holds no tensor; "
            "choose a module that outputs a tensor."
        )
    if x.ndim == 3 and x.shape[0] != batch and x.shape[1] == batch:
        x = x.transpose(0, 1)
    if x.ndim == 0 or x.shape[0] != batch:
        raise ValueError(
            f"Layer {layer!r} output has shape {tuple(x.shape)}, whose first dimension is not "
            f"the batch size {batch}; choose a module whose output has one row per example."
        )
    if not x.is_floating_point():
        x = x.float()
    if x.ndim == 4:
        if pool == "avg":
            return x.mean(dim=(2, 3), dtype=torch.float32)
        if pool == "max":
            return x.amax(dim=(2, 3)).float()
        if pool == "avgmax":
            return torch.cat(
                [x.mean(dim=(2, 3), dtype=torch.float32), x.amax(dim=(2, 3)).float()], 1
            )
        return F.adaptive_avg_pool2d(x.float(), int(pool)).flatten(1)
    if x.ndim == 3:
        if token_pool == "mean":
            return x.mean(dim=1, dtype=torch.float32)
        return x[:, 0].float()
    if x.ndim == 2:
        return x.float()
    return x.reshape(batch, -1).float()


def projection_matrix(
    layer: str, dim: int, max_dim: int, seed: int, device: torch.device
) -> torch.Tensor:
    """A fixed Gaussian (dim, max_dim) matrix with N(0, 1/max_dim) entries.

    Seeded from ``seed`` and the layer's *name* (not its position), so the same
    layer gets the same projection in every capture: source and target features
    captured separately stay comparable. Squared norms are preserved in
    expectation (Johnson-Lindenstrauss).
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(layer.encode()), dim, max_dim])
    mat = rng.standard_normal((dim, max_dim)) / np.sqrt(max_dim)
    return torch.from_numpy(mat.astype(np.float32)).to(device)
