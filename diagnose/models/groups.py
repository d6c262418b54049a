"""Parameter groups: which block (or the head) owns each parameter and module.

A group is a probed block name or ``"head"``; a parameter outside every block
belongs to the block it feeds, the next one in forward order (a stem to the
first block), and one after the last block (a final norm) to the last block.
The training engine, Auto-RGN and the unfreezing cuts all read these groups.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

__all__ = [
    "HEAD",
    "module_groups",
    "parameter_groups",
]

HEAD = "head"


def _check_names(model: nn.Module, blocks: list[str], head: str) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    available = [n for n in modules if n]

    def unknown(kind: str, name: Any) -> ValueError:
        close = difflib.get_close_matches(str(name), available, n=5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        return ValueError(
            f"{kind} {name!r} is not a module of {type(model).__name__}.{hint} "
            "List them with [n for n, _ in model.named_modules()] or probes.discover_layers(model)."
        )

    if isinstance(blocks, str) or not blocks:
        raise ValueError(
            f"The 'blocks' parameter must be a non-empty list of module names. Got {blocks!r} instead."
        )
    for b in blocks:
        if not isinstance(b, str) or b not in modules or b == "":
            raise unknown("block", b)
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"The 'blocks' parameter lists a block twice: {blocks}.")
    if not isinstance(head, str) or head not in modules or head == "":
        raise unknown("head", head)
    if head in blocks:
        raise ValueError(f"The head {head!r} cannot also be a block.")
    return modules


def _inside(name: str, parent: str) -> bool:
    return name == parent or name.startswith(parent + ".")


def module_groups(model: nn.Module, blocks: list[str], head: str) -> dict[str, str]:
    """The parameter group of every submodule (the root excluded), by the rules of
    :func:`parameter_groups`: its own block, ``"head"``, else the next block in
    ``named_modules()`` order (the last block after the last one)."""
    _check_names(model, blocks, head)
    out: dict[str, str] = {}
    pending: list[str] = []
    for name, _ in model.named_modules():
        if name == "":
            continue
        if _inside(name, head):
            out[name] = HEAD
            continue
        owner = max((b for b in blocks if _inside(name, b)), key=len, default=None)
        if owner is None:
            pending.append(name)  # between blocks: belongs to the block it feeds
            continue
        for p in pending:
            out[p] = owner
        pending = []
        out[name] = owner
    for p in pending:
        out[p] = blocks[-1]  # after the last block (a final norm, the pooling): the last block
    return out


def parameter_groups(model: nn.Module, blocks: list[str], head: str) -> dict[str, list[str]]:
    """Parameter names per group: ``blocks`` in order, then ``"head"``.

    Each parameter belongs to the block module that contains it (the innermost
    when blocks nest); the head's parameters form ``"head"``. A parameter
    outside every block (ResNet's ``conv1``/``bn1`` before the ``maxpool``
    stem block, a ViT's class token) goes to the *next* block in forward
    order, taken as ``named_modules()`` / ``named_parameters()`` order; one
    after the last block that is not the head goes to the last block. Every
    parameter is in exactly one group; a parameter-free block has an empty list.

    Example:
        >>> groups = parameter_groups(torchvision.models.resnet18(),
        ...                           ["maxpool", "layer1", "layer2", "layer3", "layer4"], "fc")
        >>> groups["maxpool"]
        ['conv1.weight', 'bn1.weight', 'bn1.bias']
    """
    owners = module_groups(model, blocks, head)
    groups: dict[str, list[str]] = {b: [] for b in blocks}
    groups[HEAD] = []
    pending: list[str] = []
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if mod_name == "":
                pending.append(full)  # parameters of the root itself: the next block's
            else:
                groups[owners[mod_name]].append(full)
        if mod_name and pending and owners[mod_name] != HEAD:
            groups[owners[mod_name]].extend(pending)
            pending = []
    groups[blocks[-1]].extend(pending)
    # named_modules() skips shared modules, named_parameters() shared tensors:
    # keep one name per tensor, in named_parameters() order.
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    return {
        g: sorted((n for n in names if n in order), key=order.__getitem__)
        for g, names in groups.items()
    }
