"""Inference passes in channels-last memory format, where that is measured to be faster.

Many convolutional networks run inference faster on the CPU (oneDNN) when the
input and the 4-D weights are channels-last (NHWC) instead of the default NCHW
(the figures are in benchmarks/); others (ConvNeXt, vision transformers) run no faster, and the
gain depends on the batch size. So it is measured on the pass itself, at no
extra full forward: :class:`PassLayout` runs a pass's first four batches NCHW,
channels-last, channels-last, NCHW (each layout's first call at a new shape
pays one-off kernel set-up; each layout's best batch is compared), after two
examples ran both ways agree, and runs the rest of the pass in the faster one.

The decision is kept for the process, keyed by the architecture (class and
parameter shapes), the input's shape, dtype and device, and autocast; never by
the thread count, so a run's layouts do not depend on the machine's load. Every pass of a kind runs the same four-batch sequence whatever was
decided, so every pass of one model in one process runs the same batches in
the same layout and repeated runs give identical numbers. The layouts differ
only by float rounding, as convolution algorithms do between machines.

:func:`time_memory_formats` times the same four-step sequence on one batch
for a short pass a caller repeats (a forgetting tracker's). Applying a layout
(:class:`probes._layout.SwappedWeights`) keeps the caller's model unchanged.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from probes._forward import logits_of
from probes._layout import (
    CHANNELS_LAST_TRIAL,
    FormatChoice,
    SwappedWeights,
    four_d_tensors,
    in_format,
    memory_format_applied,
)
from probes._validation import check_choice

__all__ = [
    "MEMORY_FORMATS",
    "PassLayout",
    "forget_memory_formats",
    "outputs_agree",
    "time_memory_formats",
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
# 16, 0.93x at 64), so the trial is the pass's own first four batches; a pass of
# fewer batches than this (or of unknown length) runs NCHW throughout and
# decides nothing.
_MIN_BATCHES = 6
_SEQUENCE = ("contiguous", "channels_last", "channels_last", "contiguous")

_decisions: dict[tuple, FormatChoice] = {}


def forget_memory_formats() -> None:
    """Drop every decision kept for this process (the next pass measures again)."""
    _decisions.clear()


def _key(model: nn.Module, x: torch.Tensor) -> tuple:
    arch = tuple((name, tuple(p.shape), p.dtype) for name, p in model.named_parameters())
    cls = type(model)
    autocast = torch.is_autocast_enabled(x.device.type)
    return (cls.__module__, cls.__qualname__, arch, tuple(x.shape[1:]), x.dtype, str(x.device),
            autocast)  # fmt: skip


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock time covers it (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _check(model: nn.Module, x: torch.Tensor) -> tuple[FormatChoice | None, bool]:
    """Two examples of ``x`` both ways: ``(None, _)`` when they agree, else why channels-last
    is out and whether that holds for the model (kept for the process). The NCHW call is also
    the pass's start-up call (thread pools, allocator)."""
    small = x[:2]
    try:
        ref = logits_of(model(small))
    except Exception as exc:
        # Not kept: the pass itself raises its own, better worded error, or a later one
        # with other inputs may run.
        return FormatChoice("contiguous", f"the model's forward raised {type(exc).__name__}"), False
    try:
        with memory_format_applied(model, CHANNELS_LAST_TRIAL):
            out = logits_of(model(in_format(small, CHANNELS_LAST_TRIAL)))
    except Exception as exc:  # e.g. .view() on a channels-last activation
        why = f"a channels-last forward raised {type(exc).__name__}; kept NCHW"
        return FormatChoice("contiguous", why), True
    if not outputs_agree([ref], [out]):
        why = "channels-last outputs differed from NCHW ones; kept NCHW"
        return FormatChoice("contiguous", why), True
    return None, False


def time_memory_formats(model: nn.Module, x: torch.Tensor) -> FormatChoice:
    """The layout :class:`PassLayout` keeps for ``model`` on inputs shaped like ``x``,
    measured on the batch ``x`` where none is kept yet.

    For a short pass one caller repeats on one batch (a tracker's source images,
    each epoch), which :class:`PassLayout` runs NCHW as too short for its in-pass
    trial: here ``x`` is run through that trial's sequence (two examples both
    ways, then NCHW, channels-last twice, NCHW; channels-last must gain 5%). The
    decision is the one kept for the process, shared with every capture of the
    same architecture and input shape, so they all run one layout. Eval mode, no
    gradients, the caller's autocast; flags and weights are restored.

    Returns:
        The choice and its reason; ``speedup`` is None where no timing ran (not
        4-D floating inputs, no 4-D weights, lazy parameters, or a channels-last
        forward that fails or disagrees).
    """
    # A pass just long enough for a trial, whose batches are all ``x``: its first four are
    # the trial, and it stops there, or at its first batch where the layout is settled
    # already (kept for the process, or refused: then no forward runs).
    layout = PassLayout(model, "auto", n_batches=_MIN_BATCHES)
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            for _ in _SEQUENCE:
                xb = layout.start(x)
                if layout.decided:
                    break
                model(xb)
                layout.done(int(x.shape[0]))
    finally:
        layout.close()
        for module, flag in flags:
            module.training = flag
    return layout.choice


class PassLayout:
    """The memory layout of each batch of one inference pass of ``model``.

    Call :meth:`start` with each batch (its device and dtype set) just before
    the forward, running what it returns, and :meth:`done` right after;
    :meth:`close` at the end (also on error) puts the original weights back.

    Args:
        model: the model, in eval mode, without gradients.
        memory_format: ``"auto"`` (see the module docstring), ``"contiguous"``
            (every batch NCHW) or ``"channels_last"`` (every 4-D batch
            channels-last).
        n_batches: the pass's batch count. A pass of fewer than 6, or of
            unknown length (None), runs NCHW throughout and decides nothing, so
            such passes repeat bit for bit whatever other passes decided.

    Raises:
        ValueError: ``memory_format`` is not one of :data:`MEMORY_FORMATS`.

    Example:
        >>> layout = PassLayout(model, "auto", n_batches=len(batches))
        >>> try:
        ...     for x in batches:
        ...         out = model(layout.start(x)); layout.done(x.shape[0])
        ... finally:
        ...     layout.close()
        >>> layout.choice.memory_format
        'channels_last'
    """

    def __init__(self, model: nn.Module, memory_format: str = "auto", n_batches: int | None = None):
        check_choice(memory_format, "memory_format", "capture", MEMORY_FORMATS)
        self.model, self.requested, self.n_batches = model, memory_format, n_batches
        self.weights = SwappedWeights(model)
        self._fixed: FormatChoice | None = None  # one layout for every batch
        self._decided: FormatChoice | None = None  # after the sequence (kept or measured now)
        self._trial = False
        self._times: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
        self._i = 0
        self._t0 = 0.0
        self._key: tuple | None = None
        self._batch = 0
        self._device = torch.device("cpu")

    @property
    def decided(self) -> bool:
        """True once the pass's layout is settled: fixed at its first batch, or measured."""
        return self._fixed is not None or self._decided is not None

    @property
    def choice(self) -> FormatChoice:
        """The layout of the pass after its first four batches, and why."""
        if self._fixed is not None:
            return self._fixed
        if self._decided is not None:
            return self._decided
        return FormatChoice("contiguous", "the pass ended before its four-batch trial did")

    def _begin(self, x: torch.Tensor) -> None:
        model, asked = self.model, self.requested
        if asked == "contiguous":
            self._fixed = FormatChoice("contiguous", "requested")
        elif x.ndim != 4 or not x.is_floating_point():
            self._fixed = FormatChoice("contiguous", "inputs are not 4-D floating images")
        elif asked == "channels_last":
            self._fixed = FormatChoice("channels_last", "requested")
        elif any(nn.parameter.is_lazy(p) for p in model.parameters()):
            self._fixed = FormatChoice(
                "contiguous", "the model has uninitialised (lazy) parameters"
            )
        elif not four_d_tensors(model):
            self._fixed = FormatChoice(
                "contiguous", "the model has no 4-D weights (no 2-D convolutions)"
            )
        elif self.n_batches is None:
            self._fixed = FormatChoice("contiguous", "the pass's length is unknown (no len())")
        elif self.n_batches < _MIN_BATCHES:
            self._fixed = FormatChoice(
                "contiguous", f"a pass of {self.n_batches} batch(es) is too short for a trial"
            )
        else:
            self._key = _key(model, x)
            kept = _decisions.get(self._key)
            if kept is not None and kept.speedup is None:  # channels-last fails on this model
                self._fixed = kept
            elif kept is not None:
                self._decided = kept
            else:
                failed, keep = _check(model, x)
                self._fixed, self._trial = failed, failed is None
                if keep:
                    _decisions[self._key] = failed

    def layout(self, i: int) -> str:
        """The layout of batch ``i`` (0-based) of this pass."""
        if self._fixed is not None:
            return self._fixed.memory_format
        if i < len(_SEQUENCE):
            return _SEQUENCE[i]
        return self.choice.memory_format

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the layout of this batch, with the weights to match."""
        if self._i == 0:
            self._begin(x)
            self._batch = int(x.shape[0])
        layout = self.layout(self._i)
        if layout == "channels_last":
            self.weights.apply(CHANNELS_LAST_TRIAL)
            x = in_format(x, CHANNELS_LAST_TRIAL)
        else:
            self.weights.restore()
        if self._trial:
            self._device = x.device
            _sync(self._device)
            self._t0 = time.perf_counter()
        return x

    def done(self, n: int) -> None:
        """After the forward of the batch :meth:`start` returned (``n`` examples)."""
        if self._trial and self._i < len(_SEQUENCE):
            _sync(self._device)
            per_example = (time.perf_counter() - self._t0) / max(int(n), 1)
            self._times[_SEQUENCE[self._i]].append(per_example)
            if self._i == len(_SEQUENCE) - 1:
                self._decide()
        self._i += 1

    def _decide(self) -> None:
        nchw, cl = min(self._times["contiguous"]), min(self._times["channels_last"])
        b = self._batch
        timing = (
            f"a batch of {b} took {1000 * b * nchw:.0f} ms in NCHW and "
            f"{1000 * b * cl:.0f} ms channels-last (best of two each)"
        )
        speedup = nchw / max(cl, 1e-12)
        if cl < _MARGIN * nchw:
            choice = FormatChoice("channels_last", f"measured: {timing}", speedup)
        else:
            choice = FormatChoice("contiguous", f"measured: {timing}; kept NCHW", speedup)
        self._decided = choice
        _decisions[self._key] = choice

    def close(self) -> None:
        """Put the model's original weights back (safe to call twice)."""
        self.weights.restore()
