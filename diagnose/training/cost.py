"""Compute cost of a training run: FLOPs, peak memory, trainable parameters.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts
the matrix multiplications and convolutions of the ops actually dispatched
(2 FLOPs per multiply-add; element-wise ops, normalisation and the optimiser
update are not counted). One representative step is counted per distinct
phase of a run and multiplied by that phase's number of steps.

A convolution's backward is counted as what it computes: each of its two
gradients (input, weight) costs the multiply-adds of the forward convolution.
torch's own formula leaves ``groups`` out of the weight gradient, so a
depthwise convolution of C channels is counted C times over (pull request
pytorch/pytorch#183405), which made every run that trains depthwise
convolutions look tens of times dearer than one that does not.

Example:
    >>> flops = count_train_step_flops(lambda: loss_fn(model(x), y).backward())
    >>> with PeakMemory(torch.device("cpu")) as mem:
    ...     train()
    >>> mem.peak_bytes, mem.kind
    (512000000, 'process_rss')
"""

from __future__ import annotations

import math
import resource
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "FLOP_FORMULAS",
    "PeakMemory",
    "count_train_step_flops",
    "current_rss_bytes",
    "trainable_params",
]


def _conv_backward_flops(
    grad_out, x, w, _bias, _stride, _padding, _dilation, transposed, _output_padding, _groups,
    output_mask, **_kwargs,
) -> int:  # fmt: skip
    """FLOPs of ``aten.convolution_backward``: the forward's for each gradient it computes.

    The forward convolution takes 2 x (every weight element) x (every spatial position of
    its output, or of its input when transposed) x batch FLOPs. The weight's shape
    ``(C_out, C_in / groups, k...)`` (``(C_in, C_out / groups, k...)`` transposed) already
    holds the grouping, so the count is right for grouped and depthwise layers alike.
    Arguments are tensors or their shapes (FlopCounterMode passes shapes).
    """
    # grad_out has the forward output's shape
    out_shape, x_shape, w_shape = (tuple(getattr(a, "shape", a)) for a in (grad_out, x, w))
    spatial = (x_shape if transposed else out_shape)[2:]
    forward = 2 * x_shape[0] * math.prod(spatial) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


# Formulas that replace torch's in every count here (``FlopCounterMode(custom_mapping=)``).
FLOP_FORMULAS = {torch.ops.aten.convolution_backward: _conv_backward_flops}


def count_train_step_flops(step_fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step_fn`` (forward and backward if it does both).

    Runs ``step_fn`` once under ``FlopCounterMode`` (with :data:`FLOP_FORMULAS`): its side
    effects happen as usual, so count a real training step rather than an
    extra one. A Linear layer (N x in -> out) counts 2*N*in*out forward and
    twice that backward (input and weight gradients).
    """
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        step_fn()
    return int(counter.get_total_flops())


def trainable_params(model: nn.Module) -> int:
    """Number of scalar parameters with ``requires_grad`` (shared tensors counted once)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def current_rss_bytes() -> int | None:
    """Resident set size of this process now (``VmRSS`` of /proc/self/status), or None."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _maxrss_bytes() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(usage if sys.platform == "darwin" else usage * 1024)


class PeakMemory:
    """Context manager measuring the peak memory of the code inside it.

    On CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak
    statistics on entry (``kind="cuda_allocated"``: bytes held by tensors, not
    the allocator's cache). Elsewhere: the process resident set size, sampled
    by a daemon thread reading ``VmRSS`` every ``interval`` seconds
    plus once on entry and exit (``kind="process_rss"``; the whole process,
    so it includes the interpreter, torch and the data). Where /proc is not
    readable it falls back to ``getrusage``'s ``ru_maxrss``, which is the
    peak since the process started (``source`` says which).

    Attributes:
        peak_bytes: the peak in bytes (None until the block exits).
        kind: ``"cuda_allocated"`` or ``"process_rss"``.
        source: ``"max_memory_allocated"``, ``"vmrss_sampled"`` or ``"getrusage_maxrss"``.
    """

    def __init__(self, device: torch.device | str | None = None, interval: float = 0.05):
        self.device = torch.device(device if device is not None else "cpu")
        self.interval = float(interval)
        self.peak_bytes: int | None = None
        self.kind = "cuda_allocated" if self.device.type == "cuda" else "process_rss"
        self.source = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0

    def _sample(self) -> None:
        rss = current_rss_bytes()
        if rss is not None and rss > self._peak:
            self._peak = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = "max_memory_allocated"
            return self
        if current_rss_bytes() is None:
            self.source = "getrusage_maxrss"
            return self
        self.source = "vmrss_sampled"
        self._sample()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.kind == "cuda_allocated":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.source == "getrusage_maxrss":
            self.peak_bytes = _maxrss_bytes()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._sample()
            self.peak_bytes = int(self._peak)
