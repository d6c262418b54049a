"""Which modules of a model to capture: discovery of its blocks and name checking.

A layer is named by its qualified module name from ``model.named_modules()``
(``"layer3"``, ``"features.4"``, ``"encoder.layers.encoder_layer_0"``): these
names work on any ``nn.Module``, including models that FX cannot trace.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from torch import nn

__all__ = ["discover_layers", "resolve_layers"]

# Names shown in full in an unknown-layer error before the list is cut.
_MAX_SHOWN = 40

_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

# Normalisation layers belong to the block before them (conv -> bn -> relu is one step).
_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
# Parameter-free modules that finish a block without changing what it represents.
_FOLLOWER_MODULES = (
    "torch.nn.modules.activation",
    "torch.nn.modules.dropout",
    "torch.nn.modules.pooling",
)


def _is_follower(module: nn.Module) -> bool:
    if isinstance(module, _NORM_TYPES) or isinstance(module, nn.Identity):
        return True
    return not _has_params(module) and type(module).__module__ in _FOLLOWER_MODULES


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_leaf(module: nn.Module) -> bool:
    return not any(True for _ in module.children())


def _is_head(module: nn.Module) -> bool:
    """A classification head: an ``nn.Linear``, or a Sequential whose last parametrised child is one."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Sequential):
        with_params = [m for m in module.children() if _has_params(m)]
        return bool(with_params) and isinstance(with_params[-1], nn.Linear)
    return False


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _sequential_blocks(seq: nn.Sequential, prefix: str) -> list[tuple[nn.Module, str]]:
    """The blocks of a Sequential as (first module, output name) pairs.

    A block starts at each child with parameters and runs through the
    normalisation layers, activations, dropout and pooling layers right after
    it; the block's output is its last such child. So ``Linear, ReLU, Linear,
    ReLU`` gives outputs ``"1", "3"`` (post-activation) and a Sequential of
    parametrised stages gives every child. Other parameter-free children
    (Flatten, reshapes) end a block and are not read.
    """
    blocks: list[tuple[nn.Module, str]] = []
    open_block = False
    for name, child in seq.named_children():
        if _has_params(child) and not isinstance(child, _NORM_TYPES):
            blocks.append((child, _join(prefix, name)))
            open_block = True
        elif open_block and _is_follower(child):
            blocks[-1] = (blocks[-1][0], _join(prefix, name))
        else:
            open_block = False
    return blocks


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _expand(name: str, module: nn.Module, share: float) -> list[str]:
    """A top-level candidate as hookable names.

    ModuleList / ModuleDict are never called themselves, so their items are
    used. A Sequential holding most of the model's parameters (``share`` > 0.5)
    and made only of parametrised containers is a trunk of stages (RegNet's
    ``trunk_output``): it is expanded into those stages.
    """
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return [_join(name, n) for n, m in module.named_children() if _has_params(m)]
    if isinstance(module, nn.Sequential) and share > 0.5:
        kids = list(module.named_children())
        if len(kids) >= 2 and all(_has_params(m) and not _is_leaf(m) for _, m in kids):
            return [_join(name, n) for n, _ in kids]
    return [name]


def _discover(model: nn.Module, prefix: str) -> list[str]:
    declared = getattr(model, "feature_layers", None)
    if declared is not None:
        if isinstance(declared, str) or not all(isinstance(n, str) for n in declared):
            raise TypeError(
                "The 'feature_layers' attribute of the model must be a list of module names. "
                f"Got {declared!r} instead."
            )
        return [_join(prefix, n) for n in declared]

    # timm models declare their feature layers as feature_info[i]["module"].
    info = getattr(model, "feature_info", None)
    if (
        isinstance(info, (list, tuple))
        and info
        and all(isinstance(d, dict) and isinstance(d.get("module"), str) for d in info)
    ):
        return [_join(prefix, d["module"]) for d in info]

    if all(isinstance(getattr(model, p, None), nn.Module) for p in _RESNET_PARTS):
        # The stem (conv1 -> bn1 -> relu -> maxpool) is read at maxpool's output.
        return [_join(prefix, p) for p in ("maxpool", "layer1", "layer2", "layer3", "layer4")]

    encoder = getattr(model, "encoder", None)
    if (
        isinstance(getattr(model, "conv_proj", None), nn.Module)
        and isinstance(getattr(encoder, "layers", None), nn.Sequential)
        and isinstance(getattr(encoder, "ln", None), nn.Module)
    ):
        # torchvision VisionTransformer: every encoder block, then the final LayerNorm
        # (what the classification head reads).
        blocks = [_join(prefix, f"encoder.layers.{n}") for n, _ in encoder.layers.named_children()]
        return [*blocks, _join(prefix, "encoder.ln")]

    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and any(m is features for m in model.children()):
        return [name for _, name in _sequential_blocks(features, _join(prefix, "features"))]

    if isinstance(model, nn.Sequential):
        blocks = _sequential_blocks(model, prefix)
        if len(blocks) >= 2 and isinstance(blocks[-1][0], nn.Linear):
            blocks = blocks[:-1]  # the final bare Linear is the classifier
        return [name for _, name in blocks]

    candidates = [(n, m) for n, m in model.named_children() if _has_params(m)]
    if len(candidates) >= 2 and _is_head(candidates[-1][1]):
        candidates = candidates[:-1]
    if len(candidates) == 1 and not _is_leaf(candidates[0][1]):
        # A wrapper (backbone + something parameter-free): look inside the backbone.
        name, module = candidates[0]
        return _discover(module, _join(prefix, name))
    total = sum(_n_params(m) for _, m in candidates) or 1
    names: list[str] = []
    for name, module in candidates:
        share = _n_params(module) / total
        names.extend(_join(prefix, n) for n in _expand(name, module, share))
    return names


def discover_layers(model: nn.Module) -> list[str]:
    """The model's meaningful blocks, in forward order, as qualified module names.

    These are the layers :func:`probes.capture` reads with ``layers="auto"``.
    Rules, first match wins:

    1. ``model.feature_layers`` (a list of module names) if the model has it:
       the escape hatch for any architecture.
    2. timm-style ``model.feature_info`` (a list of dicts with a ``"module"`` key).
    3. ResNet (``conv1, bn1, relu, maxpool, layer1..layer4``):
       ``["maxpool", "layer1", "layer2", "layer3", "layer4"]``; the stem is read
       at the max-pool's output.
    4. torchvision VisionTransformer: every ``encoder.layers.encoder_layer_i``,
       then ``encoder.ln``.
    5. A ``features`` Sequential (MobileNet, EfficientNet, ConvNeXt, VGG,
       DenseNet, Swin): the blocks of ``features`` (see 6); for models whose
       ``features`` children are all stages this is every child.
    6. A plain ``nn.Sequential``: one name per block, where a block starts at a
       child with parameters and runs through the parameter-free and
       normalisation children after it, read at its last child
       (``Linear, ReLU, Linear, ReLU, Linear`` gives ``["1", "3"]``). A final
       bare ``nn.Linear`` classifier is left out.
    7. Any other module: its top-level children with parameters, in
       registration order, without the final classification head (an
       ``nn.Linear`` or a Sequential ending in one). A ModuleList child gives
       its items; a Sequential trunk (parametrised containers holding most of
       the parameters, like RegNet's ``trunk_output``) gives its stages; a model
       with a single such child (a wrapper around a backbone) is searched inside it.

    Registration order is assumed to be forward order in rule 7; set
    ``model.feature_layers`` when it is not.

    Example:
        >>> import torchvision
        >>> discover_layers(torchvision.models.resnet18())
        ['maxpool', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' parameter must be a torch.nn.Module. Got {type(model).__name__} instead."
        )
    names = _discover(model, "")
    resolve_layers(model, names)  # a declared name that does not exist is an error here too
    return names


def resolve_layers(model: nn.Module, layers: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """Map layer names to modules, or raise ``ValueError`` listing the valid names.

    Unknown names are all reported at once, with close matches and the first
    available module names, and the error points to :func:`probes.discover_layers`.
    """
    modules = dict(model.named_modules())
    seen: set[str] = set()
    duplicates = [n for n in layers if n in seen or seen.add(n)]
    if duplicates:
        raise ValueError(f"The 'layers' parameter names a layer more than once: {duplicates}.")
    unknown = [n for n in layers if n not in modules]
    if unknown:
        raise ValueError(_unknown_message(model, unknown, [n for n in modules if n]))
    return [(n, modules[n]) for n in layers]


def _unknown_message(model: nn.Module, unknown: list[str], available: list[str]) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        parts.append(f"Layer {name!r} is not a module of {type(model).__name__}.{hint}")
    listed = available
    if len(listed) > _MAX_SHOWN:
        # The top two levels say most about a big model; deep leaves are found via close matches.
        listed = [n for n in available if n.count(".") < 2][:_MAX_SHOWN]
    shown = ", ".join(repr(n) for n in listed)
    if len(listed) < len(available):
        shown += f", ... ({len(available) - len(listed)} more)"
    return (
        " ".join(parts)
        + f" Available module names ({len(available)}): {shown}."
        + " Use probes.discover_layers(model) to list the model's meaningful blocks,"
        + " or any name from model.named_modules()."
    )
