"""Loading models: the demo CNN, torchvision architectures, ``module:function`` and checkpoints.

Nothing is ever downloaded. Files are read with ``torch.load(weights_only=True)``;
a file that needs full unpickling (which can run arbitrary code) is refused
unless the caller passes ``trust_checkpoint=True``.

Example:
    >>> lm = load_model("demo")                      # pretrained on demo:digits, cached
    >>> lm.head, lm.input_size, lm.num_source_classes
    ('head', 32, 10)
    >>> ctrl = random_init_copy(lm.model, seed=0)    # the "what does pretraining buy" control
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diagnose._demo_model import DemoCNN, load_or_pretrain
from diagnose._specs import call_spec, is_callable_spec
from diagnose._weights_io import extract_state_dict, load_state_dict_checked, torch_load

__all__ = [
    "LoadedModel",
    "demo_model",
    "demo_model_info",
    "find_head",
    "load_model",
    "load_weights",
    "random_init_copy",
    "replace_module",
]

_CHECKPOINT_EXT = (".pt", ".pth", ".ckpt", ".bin")


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
    """Qualified name of the last ``nn.Linear`` in ``named_modules()`` order, or None.

    Example:
        >>> find_head(torchvision.models.resnet18())
        'fc'
    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
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


def demo_model(*, cache_dir: str | None = None, seed: int = 0, progress: bool = True) -> nn.Module:
    """The demo CNN pretrained on ``demo:digits`` (eval mode), trained once and cached.

    The first call trains for a few seconds (a tqdm bar unless
    ``progress=False``) and caches the weights; later calls load them. See
    ``demo_model_info`` for the measured accuracy and training time.
    """
    model, _, _ = load_or_pretrain(cache_dir, seed, progress)
    return model


def demo_model_info(cache_dir: str | None = None, seed: int = 0) -> dict:
    """Pretraining metadata of the demo model (training it first if not cached).

    Keys: ``seed``, ``recipe_version``, ``epochs``, ``n_train``, ``n_test``,
    ``source_test_accuracy`` (fraction in [0, 1] on the test split of
    ``demo:digits``), ``train_seconds``, ``torch_version``, ``cache_path``,
    ``from_cache``, ``notes``.
    """
    _, meta, notes = load_or_pretrain(cache_dir, seed, progress=False)
    return dict(meta, notes=notes)


def _apply_weights(
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


def _describe(model: nn.Module, spec: str, **fields: Any) -> LoadedModel:
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


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    trust_checkpoint: bool = False,
    head: str | None = None,
    progress: bool = True,
    cache_dir: str | None = None,
) -> LoadedModel:
    """Load a model from ``demo``, ``torchvision:NAME``, ``module.path:function`` or a checkpoint.

    ``weights``: a state dict file to load into the architecture, or
    ``"random"`` for a random initialisation; for ``torchvision:NAME`` the
    default (None) reads torchvision's default weights from its local cache
    only. ``head`` overrides the detected classification head (a module
    name). The model is returned in eval mode. Every failure is a one-line
    ``ValueError`` saying what to pass instead.
    """
    from diagnose._torchvision import load_torchvision

    spec = str(spec)
    if spec == "demo":
        lm = _load_demo(weights, trust_checkpoint, progress, cache_dir)
    elif spec.startswith("torchvision:"):
        lm = load_torchvision(spec, weights, trust_checkpoint)
    elif os.path.isfile(spec) or spec.lower().endswith(_CHECKPOINT_EXT):
        lm = _load_checkpoint(spec, weights, trust_checkpoint)
    elif is_callable_spec(spec):
        lm = _load_callable(spec, weights, trust_checkpoint)
    else:
        raise ValueError(
            f"unknown model spec {spec!r}: pass 'demo', 'torchvision:NAME' (e.g. "
            "torchvision:resnet18), module.path:function returning an nn.Module, or a "
            "checkpoint file (.pt/.pth/.ckpt)."
        )
    if head is not None:
        modules = dict(lm.model.named_modules())
        if head not in modules or head == "":
            close = difflib.get_close_matches(head, [n for n in modules if n], n=5)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ValueError(
                f"head {head!r} is not a module of {spec}.{hint} "
                "List them with [n for n, _ in model.named_modules()]."
            )
        lm.head = head
        out = getattr(modules[head], "out_features", None)
        lm.num_source_classes = int(out) if out is not None else None
        if lm.source_classes is not None and len(lm.source_classes) != lm.num_source_classes:
            lm.source_classes = None
    lm.model.eval()
    return lm


def _load_demo(
    weights: str | None, trust_checkpoint: bool, progress: bool, cache_dir: str | None
) -> LoadedModel:
    notes: list[str] = []
    classes = [str(d) for d in range(10)]
    if weights is not None:
        model, pretrained = _apply_weights(DemoCNN(), weights, trust_checkpoint, notes)
        if not pretrained:
            classes = None
    else:
        model, meta, notes = load_or_pretrain(cache_dir, 0, progress)
        pretrained = True
        verb = "loaded from" if meta["from_cache"] else "cached at"
        notes = [
            "demo CNN pretrained on demo:digits (train+val split, seed 0): "
            f"{meta['source_test_accuracy']:.1%} accuracy on its {meta['n_test']} test images, "
            f"trained in {meta['train_seconds']:.1f} s; {verb} {meta['cache_path']}",
            *notes,
        ]
    return _describe(
        model,
        "demo",
        source_classes=classes,
        input_size=32,
        pretrained=bool(pretrained),
        notes=notes,
    )


def _load_checkpoint(spec: str, weights: str | None, trust_checkpoint: bool) -> LoadedModel:
    obj = torch_load(spec, trust_checkpoint, "checkpoint")
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]
    if not isinstance(obj, nn.Module):
        if isinstance(obj, Mapping):
            raise ValueError(
                f"{spec} is a state dict with no architecture: pass --model ARCH --weights {spec} "
                "(ARCH: torchvision:NAME or module.path:function)."
            )
        raise ValueError(f"checkpoint '{spec}' holds a {type(obj).__name__}, not an nn.Module.")
    notes = [f"full model unpickled from {spec} (trusted with --trust-checkpoint)"]
    model, pretrained = _apply_weights(obj, weights, trust_checkpoint, notes)
    return _describe(model, spec, pretrained=pretrained is not False, notes=notes)


def _load_callable(spec: str, weights: str | None, trust_checkpoint: bool) -> LoadedModel:
    obj = call_spec(spec, "an nn.Module", "model spec")
    if not isinstance(obj, nn.Module):
        raise ValueError(
            f"model spec {spec!r} returned a {type(obj).__name__}, not a torch.nn.Module."
        )
    notes = [f"model built by {spec}()"]
    model, pretrained = _apply_weights(obj, weights, trust_checkpoint, notes)
    # Without weights we cannot tell whether the function loaded any; assume it did.
    return _describe(model, spec, pretrained=pretrained is not False, notes=notes)
