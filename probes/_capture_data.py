"""Turning the ``data`` argument of :func:`probes.capture` into batches of (x, labels)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

__all__ = [
    "batches_of",
    "count_examples",
    "labels_of",
    "resolve_device",
    "split_batch",
]


def resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Where inputs go: ``device``, or the model's first parameter's (buffer's, else CPU).

    The model is never moved; a ``device`` none of its parameters is on is an error.
    """
    params = list(model.parameters())
    first = params[0].device if params else next(model.buffers(), torch.empty(0)).device
    if device is None:
        return first
    wanted = torch.device(device)
    on_it = [
        p for p in params if p.device.type == wanted.type and wanted.index in (None, p.device.index)
    ]
    if params and not on_it:
        raise ValueError(
            f"The 'device' parameter of capture is {wanted}, but the model's parameters are on "
            f"{first}. Move the model first (model.to({str(wanted)!r})) or leave device=None."
        )
    return wanted


def batches_of(data: Any, batch_size: int, max_samples: int | None) -> tuple[Iterable, int | None]:
    """An iterable of raw batches and, when known, how many there are."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        if data.ndim == 0:
            raise ValueError("The 'data' parameter is a 0-d tensor; expected a batch of inputs.")
        n = data.shape[0] if max_samples is None else min(data.shape[0], max_samples)
        return (data[i : i + batch_size] for i in range(0, n, batch_size)), math.ceil(
            n / batch_size
        )
    if isinstance(data, Dataset):
        if not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
            if max_samples is not None and len(data) > max_samples:
                data = Subset(data, range(max_samples))  # never load examples we will not use
            loader = DataLoader(data, batch_size=batch_size, shuffle=False)
            return loader, len(loader)
        return DataLoader(data, batch_size=batch_size), None
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
        try:
            total = len(data)  # type: ignore[arg-type]
        except TypeError:
            total = None
        return data, total
    raise TypeError(
        "The 'data' parameter of capture must be a torch Dataset, a DataLoader or other "
        f"iterable of batches, or a tensor of inputs. Got {type(data).__name__} instead."
    )


def count_examples(data: Any, max_samples: int | None) -> int | None:
    """How many examples ``data`` will yield, when that is known without iterating it.

    Known for tensors, arrays, sized map-style Datasets and DataLoaders over
    them with their default samplers; None for iterables (their ``len`` counts
    batches, not examples) and iterable datasets.
    """
    n: int | None = None
    if isinstance(data, (np.ndarray, torch.Tensor)) and data.ndim > 0:
        n = int(data.shape[0])
    elif isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        n = len(data) if hasattr(data, "__len__") else None
    elif isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
        try:
            n = len(data.sampler)  # type: ignore[arg-type]
        except TypeError:
            n = None
        if n is not None and data.batch_size is not None and data.drop_last:
            n -= n % data.batch_size
        elif data.batch_size is None:
            n = None  # a custom batch_sampler: batch sizes are its business
    if n is not None and max_samples is not None:
        n = min(n, max_samples)
    return n


def labels_of(y: Any, n: int) -> torch.Tensor | None:
    """``y`` as an int64 (n,) tensor if it holds integer class labels, else None."""
    if isinstance(y, np.ndarray) and np.issubdtype(y.dtype, np.integer):
        y = torch.from_numpy(y)
    elif isinstance(y, (list, tuple)) and y and all(isinstance(v, (int, np.integer)) for v in y):
        y = torch.tensor([int(v) for v in y])
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex():
        return None
    if y.dtype == torch.bool:
        return None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        return None
    return y.to("cpu", dtype=torch.int64)


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, integer labels or None) of one batch."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("The 'data' parameter yielded an empty batch tuple.")
        x, rest = batch[0], batch[1:]
    else:
        x, rest = batch, ()
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            "Each batch of 'data' must be a tensor x or a tuple (x, y, ...) with x a tensor. "
            f"Got x of type {type(x).__name__} instead."
        )
    if x.ndim == 0:
        raise ValueError("Each batch of 'data' must have a leading batch dimension; got a 0-d x.")
    return x, (labels_of(rest[0], x.shape[0]) if rest else None)
