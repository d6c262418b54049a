"""A peft-wrapped model seen as the plain model it adapts: its names and its effective weights.

peft's LoRA keeps a wrapped layer's weight under ``<layer>.base_layer.weight`` and adds
``<layer>.lora_A.<adapter>.weight`` and ``<layer>.lora_B.<adapter>.weight``; a module it
trains in full (``modules_to_save``, the new head) becomes ``<m>.original_module`` beside
``<m>.modules_to_save.<adapter>``; a ``PeftModel`` puts all of it under
``base_model.model.``. Weight drift, the forgetting tracker and a merged checkpoint need
the plain names with the adapters applied (``W + B A * scaling``). This module reads that
off any such model by duck typing (``get_base_model``, ``get_delta_weight``,
``active_adapters``), so nothing here imports peft.

Example:
    >>> merged = effective_parameters(peft_model)  # {"layer4.0.conv1.weight": W + dW, ...}
    >>> plain.load_state_dict(merged_state_dict(peft_model))
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "base_model_of",
    "effective_parameters",
    "is_lora_parameter",
    "is_original_copy",
    "merged_state_dict",
]

_BASE = ".base_layer."
_SAVED = ".modules_to_save."
_ORIGINAL = ".original_module."


def base_model_of(model: nn.Module) -> nn.Module:
    """The adapted network inside a ``PeftModel`` (its block names are the plain ones);
    any other module is returned as it is."""
    get = getattr(model, "get_base_model", None)
    inner = get() if callable(get) else None
    return inner if isinstance(inner, nn.Module) else model


def is_lora_parameter(name: str) -> bool:
    """Whether parameter ``name`` is one of a LoRA update's matrices (``lora_A``, ``lora_B``)."""
    return ".lora_" in name


def is_original_copy(name: str) -> bool:
    """Whether ``name`` is in the untouched original of a module peft trains as a copy."""
    return _ORIGINAL in name


def _active(module: nn.Module) -> list[str]:
    if getattr(module, "disable_adapters", False):
        return []
    active = getattr(module, "active_adapters", None)
    if active is None:
        one = getattr(module, "active_adapter", None)
        active = [] if one is None else [one]
    return [active] if isinstance(active, str) else list(active)


def _delta(module: nn.Module) -> torch.Tensor | None:
    """The sum of the active adapters' weight updates of a LoRA layer (None when merged:
    the base weight already holds them)."""
    get = getattr(module, "get_delta_weight", None)
    if not callable(get) or getattr(module, "merged", False):
        return None
    adapters = getattr(module, "lora_A", {})
    deltas = [get(a) for a in _active(module) if a in adapters]
    return torch.stack(deltas).sum(0) if deltas else None


def _plain_name(name: str, modules: dict[str, nn.Module]) -> str | None:
    """The plain model's name of an adapted model's tensor, or None when the plain model
    has no such tensor (an adapter's own weights, a replaced original module)."""
    if is_lora_parameter(name):
        return None
    if is_original_copy(name):
        owner = name.split(_ORIGINAL, 1)[0]
        return None if _active(modules[owner]) else name.replace(_ORIGINAL, ".", 1)
    if _SAVED in name:
        owner, rest = name.split(_SAVED, 1)
        adapter, _, leaf = rest.partition(".")
        return f"{owner}.{leaf}" if adapter in _active(modules[owner]) else None
    return name.replace(_BASE, ".", 1)


@torch.no_grad()
def effective_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of the plain model under its plain name, adapters applied.

    Args:
        model: a network, peft-adapted or not, or its ``PeftModel``.

    Returns:
        Parameter name -> detached tensor on the model's device.

    For a model without adapters this is ``dict(model.named_parameters())`` (detached).
    A LoRA layer's weight is ``base + sum of the active adapters' delta``, computed by
    the layer's own ``get_delta_weight`` (so scaling, fan-in-fan-out and convolutions are
    peft's own arithmetic).
    """
    root = base_model_of(model)
    modules = dict(root.named_modules())
    out: dict[str, torch.Tensor] = {}
    for name, p in root.named_parameters():
        plain = _plain_name(name, modules)
        if plain is None:
            continue
        value = p.detach()
        if _BASE in name and name.endswith(".weight"):
            delta = _delta(modules[name.split(_BASE, 1)[0]])
            if delta is not None:
                value = value + delta.to(value.dtype)
        out[plain] = value
    return out


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state dict with the adapters merged in.

    Args:
        model: a peft-adapted network or its ``PeftModel`` (a plain model: its own state).

    Returns:
        CPU copies under the plain names, the keys of the plain architecture's
        ``state_dict()`` (non-persistent buffers left out, as there), so it loads strictly
        into the architecture the adapters were put on.
    """
    root = base_model_of(model)
    modules = dict(root.named_modules())
    merged = effective_parameters(root)
    state = {}
    for name, value in root.state_dict(keep_vars=True).items():
        plain = _plain_name(name, modules)
        if plain is not None:
            state[plain] = merged.get(plain, value).detach().cpu().clone()
    return state
