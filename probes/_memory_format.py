"""Inference passes in channels-last memory format, where that is measured to be faster.

Many convolutional networks run inference 1.2-2x faster on the CPU (oneDNN)
when the input and the 4-D weights are channels-last (NHWC) instead of the
default NCHW; others (ConvNeXt, vision transformers) run no faster. Which
holds for one model, input shape, device and thread count is measured, not
assumed. Every pass runs its first batch NCHW, timed; the first pass of a
kind in a process then runs that batch again channels-last (twice: a check,
then timed) and keeps the layout that is faster and agrees (:func:`planned_memory_format`,
:func:`decide_memory_format`) for the rest of its batches.

The decision is kept for the process, keyed by the architecture (class and
parameter shapes), the input's shape, dtype and device, the thread count and
autocast: every pass of one model in one process then runs the same batches
in the same layout, so repeated runs give identical numbers and the trial runs
once (a random-init
control of the same architecture shares it). The layouts differ only by float
rounding, as convolution algorithms do between machines.

:func:`memory_format_applied` swaps the model's 4-D floating parameters and
buffers for channels-last copies for the duration of a block and always puts
the original tensors back, so the caller's model is unchanged afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import nn

from probes._validation import check_choice

__all__ = [
    "MEMORY_FORMATS",
    "FormatChoice",
    "SwappedWeights",
    "decide_memory_format",
    "forget_memory_formats",
    "in_format",
    "memory_format_applied",
    "outputs_agree",
    "planned_memory_format",
    "warm_up",
]

MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
# Channels-last must beat the default by 5% on the trial batch: a tie, or a gain
# within the timing noise of one batch, keeps the layout the model was built in.
_MARGIN = 0.95
# A semantic check, not a rounding one: the layouts differ by float rounding
# (about 1e-6 of the output's scale in float32), while a forward that depends on
# the layout (as_strided, raw data pointers) differs by O(1). 1% of the largest
# output magnitude separates the two for float32, float16 and bfloat16 alike.
_AGREE = 1e-2
# Channels-last speed depends on the batch size (mobilenet_v3_small: 1.3x at
# 16, 0.93x at 64), so the trial is the pass's own first batch. It costs two
# extra forwards of that batch, which a pass of fewer batches cannot repay.
_MIN_BATCHES = 8

_decisions: dict[tuple, FormatChoice] = {}


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``memory_format``, ``reason``, ``speedup``)."""
        speedup = None if self.speedup is None else round(float(self.speedup), 3)
        return {"memory_format": self.memory_format, "reason": self.reason, "speedup": speedup}


def _four_d(model: nn.Module) -> list[torch.Tensor]:
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
        self._saved = [(t, t.data) for t in _four_d(self.model)]
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


def forget_memory_formats() -> None:
    """Drop every decision kept for this process (the next pass measures again)."""
    _decisions.clear()


def _key(model: nn.Module, x: torch.Tensor) -> tuple:
    arch = tuple((name, tuple(p.shape), p.dtype) for name, p in model.named_parameters())
    cls = type(model)
    autocast = torch.is_autocast_enabled(x.device.type)
    return (cls.__module__, cls.__qualname__, arch, tuple(x.shape[1:]), x.dtype, str(x.device),
            torch.get_num_threads(), autocast)  # fmt: skip


def _timed(forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> tuple[float, Any]:
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    out = forward(x)
    if cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start, out


def outputs_agree(nchw: list[torch.Tensor], channels_last: list[torch.Tensor]) -> bool:
    """True when each pair of outputs has one shape, is finite, and differs by at most
    1% of the NCHW one's largest magnitude (a semantic check, not a rounding one)."""
    if len(nchw) != len(channels_last):
        return False
    for a, b in zip(nchw, channels_last):
        if a.shape != b.shape:
            return False
        a, b = a.detach().float(), b.detach().float().to(a.device)
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            return False
        scale = max(float(a.abs().max()), 1e-12) if a.numel() else 1.0
        if a.numel() and float((a - b).abs().max()) > _AGREE * scale:
            return False
    return True


def planned_memory_format(
    model: nn.Module, x: torch.Tensor, memory_format: str = "auto", n_batches: int | None = None
) -> FormatChoice | None:
    """The layout of a pass over batches like ``x``, or None when the pass must measure it.

    Every pass runs its first batch NCHW. The rest of the pass runs in the
    returned layout: as asked (``"contiguous"``, or ``"channels_last"`` for
    4-D inputs); NCHW when channels-last cannot apply (inputs not 4-D floating
    images, no 4-D weights, lazy parameters) or the pass is too short to repay
    a trial (``n_batches`` known and under 8); the decision kept from an
    earlier pass in this process. None (``"auto"``, nothing kept): time the
    first batch, then call :func:`decide_memory_format`.

    Raises:
        ValueError: ``memory_format`` is not one of :data:`MEMORY_FORMATS`.
    """
    check_choice(memory_format, "memory_format", "capture", MEMORY_FORMATS)
    if memory_format == "contiguous":
        return FormatChoice("contiguous", "requested")
    if x.ndim != 4 or not x.is_floating_point():
        return FormatChoice("contiguous", "inputs are not 4-D floating images")
    if memory_format == "channels_last":
        return FormatChoice("channels_last", "requested")
    if any(nn.parameter.is_lazy(p) for p in model.parameters()):
        return FormatChoice("contiguous", "the model has uninitialised (lazy) parameters")
    if not _four_d(model):
        return FormatChoice("contiguous", "the model has no 4-D weights (no 2-D convolutions)")
    kept = _decisions.get(_key(model, x))
    if kept is not None:
        return kept
    if n_batches is not None and n_batches < _MIN_BATCHES:
        return FormatChoice(
            "contiguous", f"a pass of {n_batches} batch(es) is too short to repay a trial"
        )
    return None


def decide_memory_format(
    model: nn.Module,
    x: torch.Tensor,
    nchw_seconds: float,
    run: Callable[[torch.Tensor], bool],
) -> FormatChoice:
    """Measure channels-last on the batch ``x`` that just ran NCHW in ``nchw_seconds``.

    ``run(x_channels_last)`` runs the same pass on it with the weights swapped
    (:func:`memory_format_applied`), keeps nothing, and says whether its
    outputs agree with the NCHW ones (:func:`outputs_agree`). It runs twice:
    once to check and build the kernels, once timed. Channels-last is chosen
    when it agrees and is at least 5% faster; the decision is kept for the
    process.
    """
    trial = FormatChoice("channels_last", "trial")
    try:
        with memory_format_applied(model, trial):
            x_cl = in_format(x, trial)
            # Untimed first: it checks the outputs and builds the channels-last
            # kernels for this shape (oneDNN's first call at a new shape costs about
            # a batch more; NCHW's first batch ran after warm_up's start-up call).
            same = run(x_cl)
            seconds, _ = _timed(run, x_cl) if same else (0.0, None)
    except Exception as exc:  # e.g. .view() on a channels-last activation
        choice = FormatChoice(
            "contiguous", f"a channels-last forward raised {type(exc).__name__}; kept NCHW"
        )
    else:
        timing = (
            f"a batch of {x.shape[0]} took {1000 * nchw_seconds:.0f} ms in NCHW and "
            f"{1000 * seconds:.0f} ms channels-last"
        )
        speedup = nchw_seconds / max(seconds, 1e-9)
        if not same:
            choice = FormatChoice(
                "contiguous", "channels-last outputs differed from NCHW ones; kept NCHW"
            )
        elif seconds < _MARGIN * nchw_seconds:
            choice = FormatChoice("channels_last", f"measured: {timing}", speedup)
        else:
            choice = FormatChoice("contiguous", f"measured: {timing}; kept NCHW", speedup)
    _decisions[_key(model, x)] = choice
    return choice


def warm_up(model: nn.Module, x: torch.Tensor) -> None:
    """One forward of two examples of ``x`` (errors ignored), so the first batch's time
    holds no one-off start-up cost (thread pools, allocator) to count against NCHW."""
    try:
        model(x[:2])
    except Exception:
        pass  # the pass itself raises its own, better worded error
