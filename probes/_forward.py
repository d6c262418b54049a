"""Checks around one forward pass of :func:`probes.capture`.

A hooked layer must run exactly once per forward (:func:`call_error` says why
not), and a batch that runs out of device memory is re-run in halves: these
helpers say whether an exception is an out-of-memory error, release the
allocator's cached blocks before the retry and word the recorded warning.
"""

from __future__ import annotations

import gc

import torch

__all__ = ["call_error", "free_device_memory", "is_out_of_memory", "oom_note"]


def is_out_of_memory(exc: BaseException) -> bool:
    """True for ``torch.cuda.OutOfMemoryError`` or a RuntimeError saying "out of memory".

    Other backends (MPS, older CUDA builds) raise a plain RuntimeError whose
    message contains "out of memory", so the message is checked too.

    Example:
        >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
        True
    """
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_device_memory() -> None:
    """Drop unreachable tensors and return the CUDA allocator's cached blocks (no-op on CPU)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def oom_note(split: int, total: int, smallest: int, fits: int, batch_size: int) -> str:
    """The one-line warning recorded when ``split`` of ``total`` batches had to be re-run smaller.

    ``smallest`` is the smallest piece run, ``fits`` the largest piece size that
    ran in every split batch (the batch size to suggest).

    Example:
        >>> oom_note(3, 10, 16, 32, 64)[:40]
        'capture: 3 of 10 batches ran out of devi'
    """
    return (
        f"capture: {split} of {total} batches ran out of device memory and were re-run in "
        f"smaller pieces (down to {smallest} examples); features are per example, so they "
        f"are unaffected, but batch_size={fits} (not {batch_size}) avoids the retries."
    )


def call_error(name: str, count: int) -> ValueError:
    """The error for a hooked layer called ``count`` != 1 times in one forward pass."""
    if count == 0:
        return ValueError(
            f"Layer {name!r} was not called during the forward pass (unused in eval mode, "
            "or called only on some batches); choose a module the forward pass always runs."
        )
    parent = repr(name.rsplit(".", 1)[0]) if "." in name else "a block that contains it"
    return ValueError(
        f"Layer {name!r} was called {count} times in one forward pass (a module reused at "
        "several places, such as one shared ReLU), so its outputs cannot be told apart. "
        f"Capture its parent block instead ({parent})."
    )
