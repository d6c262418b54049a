"""Applying a memory layout to a model's inference: the choice, the weights, the inputs.

:class:`FormatChoice` names a layout and why it was chosen;
:class:`SwappedWeights` and :func:`memory_format_applied` swap the model's 4-D
floating parameters and buffers for channels-last copies and always put the
original tensors back, so the caller's model is unchanged afterwards;
:func:`in_format` puts an input batch in the chosen layout. Which layout to
choose is :mod:`probes._memory_format`'s concern.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHANNELS_LAST_TRIAL",
    "FormatChoice",
    "SwappedWeights",
    "four_d_tensors",
    "in_format",
    "memory_format_applied",
]


@dataclass(frozen=True)
class FormatChoice:
    """The memory format of a model's inference passes, and why.

    Attributes:
        memory_format: ``"contiguous"`` (NCHW, PyTorch's default) or ``"channels_last"``.
        reason: one line: requested, measured (with the times) or why no trial ran.
        speedup: the trial's NCHW time over its channels-last time; None without a trial.
    """

    memory_format: str
    reason: str
    speedup: float | None = None

    @property
    def channels_last(self) -> bool:
        """True when inputs and 4-D weights run channels-last."""
        return self.memory_format == "channels_last"

    def describe(self) -> str:
        """One line for a report: the layout and, in brackets, why."""
        return f"{self.memory_format} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``memory_format``, ``reason``, ``speedup``)."""
        speedup = None if self.speedup is None else round(float(self.speedup), 3)
        return {"memory_format": self.memory_format, "reason": self.reason, "speedup": speedup}


# The channels-last side of a trial (the layout tried, not yet a decision).
CHANNELS_LAST_TRIAL = FormatChoice("channels_last", "trial")


def four_d_tensors(model: nn.Module) -> list[torch.Tensor]:
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

    @property
    def applied(self) -> bool:
        """True between :meth:`apply` of a channels-last choice and :meth:`restore`."""
        return self._saved is not None

    def apply(self, choice: FormatChoice | None) -> None:
        """Swap the weights in, for a channels-last ``choice`` (nothing otherwise, or twice)."""
        if self._saved is not None or choice is None or not choice.channels_last:
            return
        self._saved = [(t, t.data) for t in four_d_tensors(self.model)]
        for t, data in self._saved:
            t.data = data.contiguous(memory_format=torch.channels_last)

    def restore(self) -> None:
        """Put the original tensors back (nothing when none were swapped)."""
        for t, data in self._saved or []:
            t.data = data
        self._saved = None


@contextmanager
def memory_format_applied(model: nn.Module, choice: FormatChoice | None) -> Iterator[None]:
    """Within the block, ``model``'s 4-D floating weights are channels-last when ``choice`` says so
    (:class:`SwappedWeights`); the original tensors are back on exit, also when the block
    raises. Nothing happens for None or a contiguous choice."""
    weights = SwappedWeights(model)
    try:
        weights.apply(choice)
        yield
    finally:
        weights.restore()


def in_format(x: torch.Tensor, choice: FormatChoice | None) -> torch.Tensor:
    """``x`` in the layout of ``choice``: a channels-last copy of a 4-D tensor, else ``x`` itself."""
    if choice is not None and choice.channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
