"""Relative weight drift per block: how far fine-tuning moved the weights from the pretrained ones.

``||w - w0|| / ||w0||`` over a block's parameters (0 = unchanged, 0.1 = moved by
10% of its norm). :class:`WeightDrift` is built once per reference, so a
measurement every epoch costs a pass over the weights, not a copy of them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diagnose.models import effective_parameters

__all__ = [
    "WeightDrift",
    "weight_drift",
]


class WeightDrift:
    """Relative L2 drift per parameter group, ``||w - w0|| / ||w0||``, against fixed weights.

    Built once from the reference weights (their norms are computed here, once);
    each call is a few fused float32 reductions over the model's parameters and one
    host sync, so a per-epoch measurement costs about one pass over the weights, not
    a float64 copy of the network. The ``"head"`` group is skipped (a new head has
    no reference) and so are groups without parameters. A group whose reference
    norm is 0 gets 0.0 if unchanged, else None (no relative scale).

    Args:
        reference_state: parameter name -> its reference value (the pretrained weights),
            on any device (moved to the model's for each call when it differs).
        groups: group -> parameter names (:func:`diagnose.models.parameter_groups`).

    Example:
        >>> drift = WeightDrift(w0, {"block1": ["block1.0.weight"]})
        >>> drift(model)  # block1 scaled by 1.1
        {'block1': 0.1}
    """

    def __init__(self, reference_state: dict[str, torch.Tensor], groups: dict[str, list[str]]):
        self.groups = {g: list(names) for g, names in groups.items() if g != "head" and names}
        for group, names in self.groups.items():
            _check_present(names, reference_state, group, "'reference_state'")
        self.refs = {
            g: [reference_state[n].detach() for n in names] for g, names in self.groups.items()
        }
        norms = [_norm(refs).cpu() for refs in self.refs.values()]
        self.ref_norms = dict(zip(self.refs, torch.stack(norms).double().tolist() if norms else []))

    def __call__(self, model: nn.Module) -> dict[str, float | None]:
        """The drift of ``model``'s parameters per group (names as in ``groups``)."""
        # A peft-adapted model is measured as the plain model with its adapters applied.
        params = effective_parameters(model)
        nums = []
        for group, names in self.groups.items():
            _check_present(names, params, group, "the model")
            ws = [params[n].detach() for n in names]
            refs = [
                r if (r.device, r.dtype) == (w.device, w.dtype) else r.to(w.device, w.dtype)
                for w, r in zip(ws, self.refs[group])
            ]
            nums.append(_norm(torch._foreach_sub(ws, refs)))
        out: dict[str, float | None] = {}
        if not nums:
            return out
        # One host sync for every group (the norms are stacked where they were computed).
        values = torch.stack([n.to(nums[0].device) for n in nums]).double().cpu().tolist()
        for group, num in zip(self.groups, values):
            den = self.ref_norms[group]
            if den > 0:
                value = num / den
                out[group] = value if math.isfinite(value) else None
            else:
                out[group] = 0.0 if num == 0 else None
        return out


def _check_present(names: list[str], where: dict, group: str, what: str) -> None:
    missing = [n for n in names if n not in where]
    if missing:
        raise ValueError(
            f"weight_drift: parameters {missing[:5]} of group {group!r} are missing from {what}."
        )


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of ``tensors`` taken together, as a float32 scalar on their device.

    Half-precision tensors are widened first: a norm summed in 16 bits keeps about
    three significant digits.
    """
    wide = [t if t.dtype in (torch.float32, torch.float64) else t.float() for t in tensors]
    per_tensor = torch._foreach_norm(wide)  # one fused kernel per device and dtype
    return torch.linalg.vector_norm(torch.stack([n.float() for n in per_tensor]))


def weight_drift(
    model: nn.Module, reference_state: dict[str, torch.Tensor], groups: dict[str, list[str]]
) -> dict[str, float | None]:
    """One measurement of :class:`WeightDrift`: ``WeightDrift(reference_state, groups)(model)``.

    Example:
        >>> weight_drift(model, w0, {"block1": ["block1.0.weight"]})  # block1 scaled by 1.1
        {'block1': 0.1}
    """
    return WeightDrift(reference_state, groups)(model)
