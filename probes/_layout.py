"""A capture pass in a plain memory layout: the model's 4-D weights and the inputs.

:class:`SwappedWeights` swaps the model's 4-D floating parameters and buffers
for channels-last copies and always puts the original tensors back, so the
caller's model is unchanged afterwards; :func:`in_format` puts an input batch
in the layout. Which layout is faster is the caller's choice (``diagnose``
decides it once per architecture).
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

__all__ = ["MEMORY_FORMATS", "SwappedWeights", "in_format"]

MEMORY_FORMATS = ("contiguous", "channels_last")


def _four_d_tensors(model: nn.Module) -> list[torch.Tensor]:
    """``model``'s 4-D floating parameters and buffers (what a channels-last layout converts)."""
    return [
        t
        for t in chain(model.parameters(), model.buffers())
        if t.ndim == 4 and t.is_floating_point()
    ]


class SwappedWeights:
    """``model``'s 4-D floating weights as channels-last copies from :meth:`apply` until
    :meth:`restore` (both idempotent).

    The parameter objects stay the same (their ``.data`` is swapped), so hooks,
    optimisers and tied weights still see them; :meth:`restore` puts the very
    original tensors back.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def apply(self, memory_format: str) -> None:
        """Swap the weights in for ``"channels_last"`` (nothing otherwise, or twice)."""
        if self._saved is not None or memory_format != "channels_last":
            return
        self._saved = [(t, t.data) for t in _four_d_tensors(self.model)]
        for t, data in self._saved:
            t.data = data.contiguous(memory_format=torch.channels_last)

    def restore(self) -> None:
        """Put the original tensors back (nothing when none were swapped)."""
        for t, data in self._saved or []:
            t.data = data
        self._saved = None


def in_format(x: torch.Tensor, memory_format: str) -> torch.Tensor:
    """``x`` in ``memory_format``: a channels-last copy of a 4-D tensor, else ``x`` itself."""
    if memory_format == "channels_last" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
