"""Batches of in-memory tensors, in one seeded order shared by every strategy.

:func:`make_loader` (a DataLoader, pinned and with workers on CUDA) and
:func:`iterate_batches` (plain indexing, on any device) give the same batches for
the same seed; a final batch of a single example is dropped, as BatchNorm in
train mode cannot normalise one value per channel.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from diagnose.core import loader_kwargs

__all__ = ["iterate_batches", "make_loader", "steps_per_epoch"]


def _drop_last(n: int, batch_size: int) -> bool:
    # A final batch of one example breaks BatchNorm in train mode (one value per
    # channel after pooling); dropping that single example is the least surprise.
    return n > 1 and n % batch_size == 1


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps per pass over ``n`` examples (a final batch of 1 is dropped)."""
    return n // batch_size + (1 if n % batch_size > 1 else 0) if n > 1 else 0


class _Rows(Dataset):
    """Rows of several aligned tensors, fetched a whole batch at a time (one index op)."""

    def __init__(self, tensors: tuple[torch.Tensor, ...]):
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return tuple(t[index] for t in self.tensors)


def make_loader(
    tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int, device: torch.device
) -> DataLoader:
    """A shuffling loader over in-memory CPU tensors; batch order fixed by ``seed``.

    The order is ``torch.randperm(n, generator=Generator().manual_seed(seed))``
    per epoch, the same as :func:`iterate_batches`, so every strategy sees the
    same batches. Pinned memory and workers on CUDA (``_device.loader_kwargs``).
    """
    data = _Rows(tensors)
    gen = torch.Generator().manual_seed(int(seed))
    sampler = BatchSampler(
        RandomSampler(data, generator=gen), batch_size, _drop_last(len(data), batch_size)
    )
    # Tensors already on the GPU can be neither pinned nor shared with workers.
    kwargs = loader_kwargs(device) if not tensors[0].is_cuda else {}
    return DataLoader(data, sampler=sampler, batch_size=None, **kwargs)


def iterate_batches(
    tensors: tuple[torch.Tensor, ...], batch_size: int, generator: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches of aligned tensors (on any device), shuffled by ``generator`` or in order if None."""
    n = int(tensors[0].shape[0])
    if generator is None:
        order = None
        stop = n
    else:
        order = torch.randperm(n, generator=generator)
        stop = n - 1 if _drop_last(n, batch_size) else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield tuple(t[start : start + batch_size] for t in tensors)
        else:
            idx = order[start : min(start + batch_size, stop)].to(tensors[0].device)
            yield tuple(t[idx] for t in tensors)
