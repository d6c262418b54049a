"""A loaded model and what is known about it (:class:`LoadedModel`), and helpers on modules.

``LoadedModel`` carries the module with its spec name, head, source classes,
input size, channels, normalisation and notes. The helpers find the
classification head, replace a submodule, make a random-init copy, and load
a weights file strictly (``weights_only=True`` unless trusted).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diagnose.models.weights_io import extract_state_dict, load_state_dict_checked, torch_load

__all__ = [
    "LoadedModel",
    "apply_weights",
    "describe_model",
    "find_head",
    "load_weights",
    "random_init_copy",
    "replace_module",
]


def replace_module(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the submodule ``name`` of ``root`` is; return the module it replaces.

    Example: ``old_head = replace_module(net, "fc", nn.Linear(512, 5))``.
    """
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = parent._modules[child]
    parent._modules[child] = new
    return old


@dataclass
class LoadedModel:
    """A model ready for measurement, with what is known about its inputs and head.

    Attributes:
        model: the network, in eval mode.
        name: the spec it was loaded from.
        head: qualified name of the source classification head (the last
            ``nn.Linear``), or None.
        source_classes: names of the head's outputs when known.
        num_source_classes: the head's ``out_features``.
        input_channels: channels the first convolution expects (3 if unknown).
        input_size: square input size the model expects, when known.
        mean, std: the input normalisation the weights expect; None means
            inputs in [0, 1] as they are.
        pretrained: False for a random initialisation.
        notes: provenance and caveats, one sentence each.
    """

    model: nn.Module
    name: str
    head: str | None
    source_classes: list[str] | None
    num_source_classes: int | None
    input_channels: int
    input_size: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    pretrained: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain-JSON description (no weights): spec, head, inputs, provenance, parameter count."""
        return {
            "name": self.name,
            "head": self.head,
            "num_source_classes": self.num_source_classes,
            "input_channels": int(self.input_channels),
            "input_size": self.input_size,
            "mean": [float(v) for v in self.mean] if self.mean is not None else None,
            "std": [float(v) for v in self.std] if self.std is not None else None,
            "pretrained": bool(self.pretrained),
            "notes": list(self.notes),
            "num_parameters": int(sum(p.numel() for p in self.model.parameters())),
        }


def find_head(model: nn.Module) -> str | None:
    """Qualified name of the model's classification head, or None when it has none.

    The last ``nn.Linear`` in ``named_modules()`` order, unless it sits inside one
    of the model's blocks (:func:`probes.discover_layers`) that modules with
    parameters still follow: a backbone shipped without its classifier (a timm ViT
    with ``num_classes=0``) still has linear layers in its last block's MLP, with the
    final norm after them, and taking one of those for the head would cut the network.

    Example:
        >>> find_head(torchvision.models.resnet18())
        'fc'
    """
    import probes

    try:
        blocks = probes.discover_layers(model)
    except ValueError:  # no blocks to speak of: any linear layer may be the head
        blocks = []
    named = list(model.named_modules())
    last = None
    for i, (name, module) in enumerate(named):
        if not isinstance(module, nn.Linear):
            continue
        inside = next((b for b in blocks if name.startswith(b + ".")), None)
        after = [m for n, m in named[i + 1 :] if inside is None or not n.startswith(inside + ".")]
        if inside is None or not any(
            next(m.parameters(recurse=False), None) is not None for m in after
        ):
            last = name
    return last


def _input_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return 3


def random_init_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-initialised; the original is untouched.

    Calls ``reset_parameters()`` (or ``_reset_parameters()``) on every
    submodule that has one, which also resets BatchNorm running statistics.
    Parameters no such method covers (e.g. a ViT's class token and position
    embedding) are drawn from N(0, 0.02^2), truncated at 2 std. Deterministic
    given ``seed``; the global RNG state is restored afterwards. Custom
    initialisations an architecture applies in its constructor are not
    replayed: this is PyTorch's default init of the same architecture.
    """
    clone = copy.deepcopy(model)
    devices = sorted({p.device.index or 0 for p in clone.parameters() if p.device.type == "cuda"})
    covered: set[int] = set()
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(
                module, "_reset_parameters", None
            )
            if callable(reset):
                reset()
                covered.update(id(p) for p in module.parameters(recurse=False))
        for module in clone.modules():
            for p in module.parameters(recurse=False):
                if id(p) not in covered:
                    nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
                    covered.add(id(p))
    return clone


def load_weights(
    model: nn.Module, path: str | os.PathLike, *, trust_checkpoint: bool = False
) -> nn.Module:
    """Load a state dict file into ``model`` (in place, strictly) and return it.

    Accepts a plain state dict or a dict holding one under ``"state_dict"``
    or ``"model"``; a ``"module."`` prefix (DataParallel) is stripped. Keys
    and shapes must match exactly, else ``ValueError`` naming the missing
    and unexpected keys and shape mismatches. A file that needs full
    unpickling is refused unless ``trust_checkpoint``.
    """
    obj = torch_load(path, trust_checkpoint, "weights file")
    state = extract_state_dict(obj, path)
    load_state_dict_checked(model, state, str(path))
    return model


def apply_weights(
    model: nn.Module, weights: str | None, trust_checkpoint: bool, notes: list[str]
) -> tuple[nn.Module, bool | None]:
    """Apply ``weights`` (a path or "random"); return the model and whether it is pretrained."""
    if weights is None:
        return model, None
    if weights == "random":
        notes.append("random initialisation (weights='random'): no pretrained knowledge")
        return random_init_copy(model, seed=0), False
    load_weights(model, weights, trust_checkpoint=trust_checkpoint)
    notes.append(f"weights loaded from {weights}")
    return model, True


def describe_model(model: nn.Module, spec: str, **fields: Any) -> LoadedModel:
    head = find_head(model)
    out = getattr(dict(model.named_modules()).get(head), "out_features", None) if head else None
    fields.setdefault("source_classes", None)
    fields.setdefault("input_size", None)
    fields.setdefault("mean", None)
    fields.setdefault("std", None)
    fields.setdefault("notes", [])
    return LoadedModel(
        model=model,
        name=spec,
        head=head,
        num_source_classes=int(out) if out is not None else None,
        input_channels=_input_channels(model),
        **fields,
    )
