"""Reading weight files safely and loading state dicts with messages that say what is wrong."""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diagnose.core import Arg, UsageError

__all__ = [
    "extract_state_dict",
    "load_state_dict_checked",
    "torch_load",
]

# Old torchvision DenseNet checkpoints name "norm.1" what the module calls "norm1".
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _holds_pickled_objects(path: Path, exc: Exception) -> bool:
    """Whether a weights-only failure is a real pickle needing full unpickling, not garbage.

    torch raises the same UnpicklingError for both; a torch zip archive or a
    file starting with a pickle protocol header is a real pickle.
    """
    if "Unsupported global" in str(exc) or zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def torch_load(path: str | os.PathLike, trust_checkpoint: bool, what: str) -> Any:
    """``torch.load`` on CPU, weights only unless trusted; every failure a ``ValueError``."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} '{path}' does not exist or is not a file.")
    try:
        with warnings.catch_warnings():
            # The weights-only unpickler warns about protocol 4 pickles it then refuses.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not (isinstance(exc, pickle.UnpicklingError) and _holds_pickled_objects(p, exc)):
            raise ValueError(
                f"{what} '{path}' could not be read as a PyTorch file ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})."
            ) from exc
        if not trust_checkpoint:
            raise UsageError(
                f"{what} '{path}' holds pickled Python objects, not only tensors (a whole saved "
                "model?); unpickling it could run arbitrary code, so it was not loaded. Pass ",
                Arg("trust_checkpoint", True),
                " only if you trust the file, or save a state "
                "dict (torch.save(model.state_dict(), path)).",
            ) from exc
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UsageError(
            f"{what} '{path}' could not be unpickled even with ",
            Arg("trust_checkpoint", True),
            f" ({type(exc).__name__}: {exc}); is the code that defines its classes importable?",
        ) from exc


def _is_tensor_mapping(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    state = None
    if _is_tensor_mapping(obj):
        state = obj
    elif isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if _is_tensor_mapping(inner):
                state = inner
                break
    if state is None:
        keys = f" with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else ""
        raise ValueError(
            f"weights file '{path}' holds a {type(obj).__name__}{keys}, not a state dict "
            "(a mapping of parameter names to tensors, or a dict with one under 'state_dict' "
            "or 'model')."
        )
    state = dict(state)
    # nn.DataParallel / DistributedDataParallel save every key under "module.".
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _examples(items: list[str], k: int = 3) -> str:
    return ", ".join(items[:k]) + (", ..." if len(items) > k else "")


def _unwrapped(state: Mapping[str, torch.Tensor], own: Mapping[str, Any]) -> Mapping:
    """The model's keys out of a wrapper's state dict: a LightningModule saves its network
    under its attribute name (``net.layer1.0.weight``), next to anything else it holds."""
    needed = [k for k in own if not k.endswith("num_batches_tracked")]
    if not needed or all(k in state for k in needed):
        return state
    first = needed[0]
    prefixes = {k[: -len(first)] for k in state if k.endswith("." + first)}
    for prefix in sorted(prefixes, key=len):
        inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if all(k in inner for k in needed):
            return inner
    return state


def load_state_dict_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    own = model.state_dict()
    state = _unwrapped(state, own)
    if any(_DENSENET_KEY.match(k) for k in state) and not any(_DENSENET_KEY.match(k) for k in own):
        state = {_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    # BatchNorm fills in a missing num_batches_tracked itself (old checkpoints).
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"'{k}': file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({_examples(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es) ({_examples(mismatched, 2)})")
        raise ValueError(
            f"weights in '{source}' do not match the model (wrong architecture?): "
            + "; ".join(parts)
            + "."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"weights in '{source}' could not be loaded: {first}") from exc
