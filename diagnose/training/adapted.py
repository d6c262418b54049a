"""Which parameters of each trained group a plan trains: all, BitFit's, or LoRA's.

:func:`select_trained` narrows :func:`diagnose.models.parameter_groups` to what
:attr:`diagnose.training.strategies.Plan.params` says, so the optimiser, the trainable
count and the gradients all see the same parameters and nothing else.
"""

from __future__ import annotations

from torch import nn

from diagnose.models import HEAD, bias_and_norm, parameter_groups

__all__ = [
    "FROZEN_NORMS",
    "select_trained",
]

# The BatchNorm modules' group under LoRA: a name no stage trains, so every one of them
# stays in eval mode (the statistics of the adapted network never move).
FROZEN_NORMS = "frozen-norms"


def select_trained(
    net: nn.Module, params: str, blocks: list[str], head: str
) -> dict[str, list[str]]:
    """The parameter names per group that may train under ``params``.

    ``"all"``: every parameter of the group. ``"bias_norm"`` (BitFit): a block's biases
    and normalisation parameters. ``"lora"``: a block's LoRA matrices (``.lora_``), and
    the head's trained copy (peft keeps the untouched original beside it).
    The head trains in full in every case.
    """
    groups = parameter_groups(net, blocks, head)
    if params == "all":
        return groups
    out: dict[str, list[str]] = {}
    for g, names in groups.items():
        if g == HEAD:
            out[g] = [n for n in names if ".original_module." not in n]
        elif params == "bias_norm":
            out[g] = bias_and_norm(net, names)
        elif params == "lora":
            out[g] = [n for n in names if ".lora_" in n]
        else:
            raise ValueError(f"Unknown trained-parameter selection {params!r}.")
    return out
