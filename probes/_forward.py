"""Checks around one forward pass of :func:`probes.capture`, and reading its output.

A hooked layer must run exactly once per forward (:func:`call_error` says why
not), and a batch that runs out of device memory is re-run in halves: these
helpers say whether an exception is an out-of-memory error, release the
allocator's cached blocks before the retry and word the recorded warning.
:func:`logits_of` takes the logits out of whatever a classifier's forward
returns (a tensor, a Hugging Face style output, a detection-style tuple).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import Any

import torch

from probes._pooling import first_tensor

__all__ = ["call_error", "free_device_memory", "is_out_of_memory", "logits_of", "oom_note"]

_MISSING = object()
_EXPECTED = (
    "expected the logits as a tensor, a dict or object with a 'logits' tensor "
    "(Hugging Face ModelOutput), or a tuple/list/dict whose first tensor is the logits"
)


def _describe(out: Any) -> str:
    if out is None:
        return "None"
    name = type(out).__name__
    if isinstance(out, Mapping):
        keys = [str(k) for k in list(out)[:6]]
        more = ", ..." if len(out) > 6 else ""
        return f"a {name} with keys [{', '.join(keys)}{more}] and no tensor"
    if isinstance(out, (tuple, list)):
        return f"a {name} of {len(out)} item(s), none of them a tensor"
    return f"a {name}"


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's forward output.

    In order: a tensor is returned as is; else a ``logits`` entry (dict,
    Hugging Face ``ModelOutput``) or ``logits`` attribute (an output object,
    a named tuple); else the first tensor in a tuple, list or dict (nested
    containers are searched depth first, as detection-style models return).

    Raises:
        TypeError: one line saying what the forward returned and what is
            expected, when there is no tensor to take, or ``logits`` is there
            but is not a tensor.

    Example:
        >>> logits_of({"loss": None, "logits": torch.ones(2, 3)}).shape
        torch.Size([2, 3])
        >>> logits_of((torch.zeros(2, 5), [torch.zeros(2, 4)])).shape
        torch.Size([2, 5])
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        found = output["logits"] if "logits" in output else _MISSING
    else:
        found = getattr(output, "logits", _MISSING)
    if found is not _MISSING:
        if isinstance(found, torch.Tensor):
            return found
        raise TypeError(
            f"the model's forward returned a {type(output).__name__} whose 'logits' is a "
            f"{type(found).__name__}, not a tensor; {_EXPECTED}."
        )
    tensor = first_tensor(output) if isinstance(output, (Mapping, tuple, list)) else None
    if tensor is None:
        raise TypeError(f"the model's forward returned {_describe(output)}; {_EXPECTED}.")
    return tensor


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
