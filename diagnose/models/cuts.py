"""Where a depth of unfreezing cuts a network, and every module that then trains.

A depth ``k`` is a cut in forward order: the last ``k`` probed blocks, and
everything between and after them, train; the rest stays frozen. Probed
blocks may be a subset of the network (timm's EfficientNet reports
``blocks.0, 1, 2, 4, 6`` as its stages; ``blocks.3``, ``blocks.5``,
``conv_head`` and ``bn2`` lie between or after them), so the engine's
parameter groups (:func:`diagnose.training.strategies.parameter_groups`) give a
module between two blocks to the block it feeds, and one after the last
block to the last block. This module names what that means for a user: the
*units* of the network (the largest modules that contain no probed block
strictly inside them) and which of them train.

Example:
    >>> net = torchvision.models.resnet18()
    >>> blocks = ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    >>> trainable_modules(net, blocks, "fc", ["layer3", "layer4"])
    ['layer3', 'layer4', 'fc']
    >>> cut_description(net, blocks, "fc", ["layer3", "layer4"])
    'everything after layer2 trains (layer3, layer4, fc)'
"""

from __future__ import annotations

from torch import nn

from diagnose.models.groups import HEAD, module_groups

__all__ = [
    "cut_description",
    "network_units",
    "trainable_groups_at_depth",
    "trainable_modules",
]


def _inside(name: str, parent: str) -> bool:
    return name == parent or name.startswith(parent + ".")


def network_units(model: nn.Module, blocks: list[str], head: str) -> list[str]:
    """The network's units in forward (``named_modules``) order.

    A unit is a module that holds parameters and contains no probed block or
    the head strictly inside it: a probed block itself, the head, or a module
    beside them (a stem convolution, an unprobed stage, a final norm). Each
    unit's parameters lie in one parameter group. Parameters of the root
    module itself (a ViT's ``cls_token``) are listed by their own names.
    """
    marks = [*blocks, head]
    units: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, _ in module.named_parameters(recurse=False):
            if prefix == "":
                units.append(name)  # root parameters: no module to name
        for child_name, child in module.named_children():
            full = f"{prefix}.{child_name}" if prefix else child_name
            holds_mark = any(_inside(m, full) and m != full for m in marks)
            if holds_mark:
                visit(full, child)
                continue
            if any(True for _ in child.parameters()):
                units.append(full)

    visit("", model)
    return units


def trainable_groups_at_depth(blocks: list[str], depth: int) -> list[str]:
    """The probed blocks a cut ``depth`` blocks below the head trains: the last ``depth``."""
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= len(blocks):
        raise ValueError(
            f"The 'depth' parameter must be an int between 1 and {len(blocks)} (the number of "
            f"probed blocks). Got {depth!r} instead."
        )
    return list(blocks[-depth:])


def _unit_group(name: str, owners: dict[str, str], blocks: list[str]) -> str:
    if name in owners:
        return owners[name]
    return blocks[0]  # a root parameter: it feeds the first block (a ViT's class token)


def trainable_modules(
    model: nn.Module, blocks: list[str], head: str, trainable: list[str]
) -> list[str]:
    """Every unit that trains when the parameter groups ``trainable`` do, in forward order.

    ``trainable`` names probed blocks (and optionally ``"head"``); the head
    always trains (a new head replaces the source one), so it is always last.
    """
    owners = module_groups(model, blocks, head)
    want = set(trainable) | {HEAD}
    out = []
    for unit in network_units(model, blocks, head):
        group = HEAD if _inside(unit, head) else _unit_group(unit, owners, blocks)
        if group in want:
            out.append(unit)
    if head not in out:
        out.append(head)
    return [u for u in out if u != head] + [head]


def cut_description(model: nn.Module, blocks: list[str], head: str, trainable: list[str]) -> str:
    """One phrase naming the cut and every module that trains after it."""
    mods = trainable_modules(model, blocks, head, trainable)
    units = network_units(model, blocks, head)
    frozen = [u for u in units if u not in mods]
    if not frozen:
        return f"every module trains ({', '.join(mods)})"
    if len(mods) == 1:
        return f"only the new head trains ({head})"
    return f"everything after {frozen[-1]} trains ({', '.join(mods)})"
