"""Which parameters of each trained group a plan trains: all, BitFit's, or LoRA's.

:func:`select_trained` narrows :func:`diagnose.models.parameter_groups` to what
:attr:`diagnose.training.strategies.Plan.params` says, so the optimiser, the trainable
count and the gradients all see the same parameters and nothing else.
"""

from __future__ import annotations

from torch import nn

from diagnose.models import (
    HEAD,
    bias_and_norm,
    is_lora_parameter,
    is_original_copy,
    parameter_groups,
)

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

    Args:
        net: the network (peft-adapted for ``"lora"``).
        params: ``"all"``: every parameter of the group; ``"bias_norm"`` (BitFit): a
            block's biases and normalisation parameters; ``"lora"``: a block's LoRA
            matrices. The head trains in full in every case (under peft: its trained
            copy, not the untouched original kept beside it).
        blocks, head: the parameter groups (:func:`diagnose.models.parameter_groups`).

    Returns:
        Group -> the names of the parameters it trains.
    """
    groups = parameter_groups(net, blocks, head)
    if params == "all":
        return groups
    out: dict[str, list[str]] = {}
    for g, names in groups.items():
        if g == HEAD:
            out[g] = [n for n in names if not is_original_copy(n)]
        elif params == "bias_norm":
            out[g] = bias_and_norm(net, names)
        elif params == "lora":
            out[g] = [n for n in names if is_lora_parameter(n)]
        else:
            raise ValueError(
                "The 'params' parameter of select_trained must be one of 'all', 'bias_norm' "
                f"or 'lora'. Got {params!r} instead."
            )
    return out
