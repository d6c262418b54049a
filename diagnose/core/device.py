"""Device decisions of the training engine, as small factories.

On CUDA: bf16 autocast, channels_last tensors, pinned-memory loaders with
worker processes and ``cudnn.benchmark``. On CPU none of these (they cost
more than they give there). Every decision is a pure function of the device,
so the CUDA branch can be exercised on a CPU-only machine by passing
``torch.device("cuda")``.

Example:
    >>> dev = torch.device("cpu")
    >>> with autocast_context(dev):
    ...     y = model(x.to(dev, memory_format=memory_format(dev)))
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from diagnose.core.params import Arg, UsageError

__all__ = [
    "autocast_context",
    "autocast_dtype",
    "configure_backends",
    "describe",
    "is_cuda",
    "loader_kwargs",
    "memory_format",
    "resolve_device",
    "to_device",
]


def is_cuda(device: torch.device | str) -> bool:
    """True for a CUDA device (``"cuda"``, ``"cuda:1"``, ``torch.device("cuda")``)."""
    return torch.device(device).type == "cuda"


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype used on ``device``: bfloat16 on CUDA, None (full float32) elsewhere.

    bfloat16 has float32's exponent range, so no loss scaling is needed. On a
    visible GPU without bf16 support (pre-Ampere) autocast is off.
    """
    if not is_cuda(device):
        return None
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16


def autocast_context(device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast("cuda", dtype=torch.bfloat16)`` on CUDA, a no-op context elsewhere."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def memory_format(device: torch.device | str) -> torch.memory_format:
    """``torch.channels_last`` on CUDA (faster convolutions with tensor cores), else contiguous."""
    return torch.channels_last if is_cuda(device) else torch.contiguous_format


def loader_kwargs(device: torch.device | str, num_workers: int | None = None) -> dict[str, Any]:
    """DataLoader keyword arguments for ``device``.

    CUDA: pinned memory (asynchronous host-to-device copies) and
    ``num_workers`` worker processes (default: half the CPUs, at most 4) kept
    alive across epochs. CPU: batches are built in the main process, which for
    in-memory tensors is faster than shipping them between processes.
    """
    if not is_cuda(device):
        return {"num_workers": 0, "pin_memory": False}
    if num_workers is None:
        num_workers = max(1, min(4, (os.cpu_count() or 2) // 2))
    return {
        "num_workers": int(num_workers),
        "pin_memory": True,
        "persistent_workers": num_workers > 0,
    }


def configure_backends(device: torch.device | str) -> dict[str, Any]:
    """Set the global backend flags for training on ``device``; return what was set.

    CUDA: ``cudnn.benchmark`` (pick the fastest convolution algorithm once per
    shape; inputs here have one shape) and TF32 matmuls. CPU: nothing. The
    flags are process-global and stay set; the returned dict is what the
    results record.
    """
    if not is_cuda(device):
        return {}
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return {"cudnn_benchmark": True, "tf32": True}


def to_device(
    x: torch.Tensor, device: torch.device | str, layout: torch.memory_format | None = None
) -> torch.Tensor:
    """Move a batch to ``device`` (non-blocking from pinned memory), a 4-D one in ``layout``
    (default: :func:`memory_format` of the device)."""
    x = x.to(device, non_blocking=is_cuda(device))
    if x.ndim == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=layout or memory_format(device))
    return x


def describe(device: torch.device | str) -> dict[str, Any]:
    """Plain-JSON summary of the decisions for ``device`` (recorded in the results)."""
    dtype = autocast_dtype(device)
    return {
        "device": str(torch.device(device)),
        "autocast": None if dtype is None else str(dtype).replace("torch.", ""),
        "channels_last": memory_format(device) == torch.channels_last,
        "pin_memory": bool(loader_kwargs(device)["pin_memory"]),
    }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = str(device)
    if not (dev == "cpu" or dev.startswith("cuda")):
        raise UsageError(Arg("device"), f" must be one of auto, cpu, cuda[:N]. Got {dev!r}.")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            Arg("device", "cuda"), " was requested but no CUDA GPU is available; use ",
            Arg("device", "cpu"), ".",
        )  # fmt: skip
    return torch.device(dev)
