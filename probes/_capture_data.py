"""Turning the ``data`` argument of :func:`probes.capture` into batches of (x, labels).

A map-style Dataset whose ``__getitem__`` raises :class:`UnreadableExample`
(an image file that fails to decode) can be read leaving those examples out:
:func:`skipping_batches` catches the exception per item, inside DataLoader
workers too, and hands each batch over with the indices it left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, default_collate

__all__ = [
    "UnreadableExample",
    "batches_of",
    "count_examples",
    "fetch_items",
    "labels_of",
    "resolve_device",
    "skipping_batches",
    "split_batch",
    "unreadable_note",
]


class UnreadableExample(Exception):
    """Raised by a Dataset's ``__getitem__`` for an example that cannot be read.

    Readers that skip such examples (``capture(..., skip_unreadable=True)``,
    :func:`skipping_batches`) leave the example out and report ``item`` (a
    short description such as "cat/3.jpg (OSError: image file is truncated)"),
    else the message; anything else sees an ordinary exception. Subclasses
    must accept the message alone (DataLoader workers re-raise exceptions as
    ``type(message)``).
    """

    def __init__(self, message: str, item: str | None = None):
        super().__init__(message)
        self.item = item

    def describe(self) -> str:
        """``item`` when given, else the message."""
        return self.item or str(self)


class _Skipped:
    """What a tolerant item fetch returns instead of an unreadable example."""

    __slots__ = ("index", "reason")

    def __init__(self, index: int, reason: str):
        self.index, self.reason = index, reason


class _Tolerant(Dataset):
    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.base[index]
        except UnreadableExample as exc:
            return _Skipped(int(index), exc.describe())

    def __getitems__(self, indices: list[int]) -> list:
        # The base's batched fetch where it has one; an unreadable example in it costs
        # that batch a fetch item by item, not its readable items.
        try:
            return fetch_items(self.base, indices)
        except UnreadableExample:
            return [self[i] for i in indices]


def fetch_items(dataset: Any, indices: Sequence[int]) -> list:
    """``[dataset[i] for i in indices]``, through ``dataset.__getitems__`` where it has one
    (DataLoader's batched fetch of a map-style dataset: a list of items)."""
    fetch = getattr(dataset, "__getitems__", None)
    if callable(fetch):
        return list(fetch(list(indices)))
    return [dataset[i] for i in indices]


def _collate_skipping(items: list) -> tuple[Any, list[tuple[int, str]]]:
    kept = [item for item in items if not isinstance(item, _Skipped)]
    skipped = [(item.index, item.reason) for item in items if isinstance(item, _Skipped)]
    return (default_collate(kept) if kept else None), skipped


def skipping_batches(
    dataset: Dataset, batch_size: int, **loader_kwargs: Any
) -> Iterator[tuple[Any, list[tuple[int, str]]]]:
    """Batches of a map-style ``dataset`` in order, leaving out unreadable examples.

    Yields ``(batch, skipped)``: ``batch`` is what the default collate makes
    of the readable items (None when none was), ``skipped`` the
    ``(index, reason)`` of each item whose ``__getitem__`` raised
    :class:`UnreadableExample` (reason: its ``describe()``). Other exceptions propagate. ``loader_kwargs``
    go to the DataLoader (``num_workers``, ``pin_memory``); the catching
    happens in the workers, so a bad example never costs its whole batch.

    Example:
        >>> batches = skipping_batches(dataset, 64)
        >>> for batch, skipped in batches: ...
    """
    loader = DataLoader(
        _Tolerant(dataset),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=_collate_skipping,
        **loader_kwargs,
    )
    yield from loader


def unreadable_note(desc: str, skipped: list[tuple[int, str]], kept: int) -> str:
    """The one-line warning of a pass that left out ``skipped`` ``(index, reason)`` examples.

    Example:
        >>> unreadable_note("capture", [(3, "cat/3.jpg (OSError)")], 9)
        'capture: skipped 1 of 10 examples that could not be read: cat/3.jpg (OSError)'
    """
    shown = "; ".join(reason for _, reason in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    return (
        f"{desc}: skipped {len(skipped)} of {len(skipped) + kept} examples that could not be "
        f"read: {shown}"
    )


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


def batches_of(
    data: Any, batch_size: int, max_samples: int | None, skip_unreadable: bool = False
) -> tuple[Iterable[tuple[Any, list[tuple[int, str]]]], int | None]:
    """An iterable of ``(raw batch, skipped)`` and, when known, how many there are.

    ``skipped`` lists the ``(index, reason)`` of the examples left out as
    unreadable (see :func:`skipping_batches`); only a sized map-style Dataset
    read with ``skip_unreadable`` leaves any out. A DataLoader or other
    iterable is read as it is, batch by batch.
    """
    if skip_unreadable and _is_map_dataset(data):
        if max_samples is not None and len(data) > max_samples:
            data = Subset(data, range(max_samples))
        return skipping_batches(data, batch_size), math.ceil(len(data) / batch_size)
    batches, total = _raw_batches(data, batch_size, max_samples)
    return ((batch, []) for batch in batches), total


def _is_map_dataset(data: Any) -> bool:
    return (
        isinstance(data, Dataset)
        and not isinstance(data, IterableDataset)
        and hasattr(data, "__len__")
    )


def _raw_batches(
    data: Any, batch_size: int, max_samples: int | None
) -> tuple[Iterable, int | None]:
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
        if _is_map_dataset(data):
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
