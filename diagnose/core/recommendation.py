"""The assessment's recommendation, typed: the strategy, what trains, its LRs and the evidence.

Written by :mod:`diagnose.decide.measured` (the race's pick, ``measured``
True, with the race's record in ``trials``) or, when no race ran, from the
rule prior (:func:`diagnose.decide.rules.recommend`, ``measured`` False with
``unmeasured_reason``), and read by the comparison's check of the prediction,
the demo and the report.
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnose.core.record import (
    Record,
    as_bool,
    as_dict,
    as_integer,
    as_number,
    as_text,
    as_tuple,
    read_as,
)

__all__ = ["Recommendation"]

# Written only by a measured recommendation (the race's pick has a depth and one head LR).
_MEASURED_ONLY = ("depth", "head_lr")


@dataclass(frozen=True)
class Recommendation(Record):
    """How to adapt the model to the target.

    Attributes:
        measured: whether a trial race on the target chose it.
        unmeasured_reason: why no race ran (unmeasured only).
        strategy: one of the eight strategy names.
        depth: ``partial`` only: the number of probed blocks that train (measured only).
        unfreeze: every module that trains, in forward order (the head last).
        unfreeze_blocks: the probed blocks that train.
        cut: the cut in words ("everything after layer2 trains (layer3, layer4, fc)").
        lr: the LR of each parameter group (``"head"`` and block names).
        head_lr: the head's LR (measured only).
        epochs: epochs of the main stage; weight_decay, optimizer: the engine's.
        confidence: "high", "medium" or "low".
        max_forgetting: the forgetting budget it was chosen under (fraction, or None).
        reasons, would_change_if: sentences that cite the measurements.
        lora: ``lora`` only: ``{"rank", "alpha", "targets"}``, the update and the layers it
            adapts (measured only).
        prior: the rule prior's strategy and confidence.
        trials: the race's record (candidates, rungs, FLOPs, verdict); None unmeasured.
    """

    measured: bool | None = read_as(as_bool)
    unmeasured_reason: str | None = read_as(as_text)
    strategy: str | None = read_as(as_text)
    depth: int | None = read_as(as_integer)
    unfreeze: tuple | None = read_as(as_tuple)
    unfreeze_blocks: tuple | None = read_as(as_tuple)
    # True when the model had no classifier: the last entry of ``unfreeze`` is a new head.
    new_head: bool | None = read_as(as_bool)
    cut: str | None = read_as(as_text)
    lr: dict | None = read_as(as_dict)
    head_lr: float | None = read_as(as_number)
    epochs: int | None = read_as(as_integer)
    weight_decay: float | None = read_as(as_number)
    optimizer: str | None = read_as(as_text)
    confidence: str | None = read_as(as_text)
    max_forgetting: float | None = read_as(as_number)
    reasons: tuple | None = read_as(as_tuple)
    would_change_if: tuple | None = read_as(as_tuple)
    lora: dict | None = read_as(as_dict)
    prior: dict | None = read_as(as_dict)
    trials: dict | None = read_as(as_dict)

    def emits(self, name: str) -> bool:
        if name in _MEASURED_ONLY:
            return bool(self.measured)
        if name == "unmeasured_reason":
            return not self.measured
        if name == "lora":
            return self.lora is not None
        if name == "new_head":  # a measured recommendation's; the rules' prior trains none
            return bool(self.measured)
        if name == "cut":  # worded only where the model's modules are known
            return self.cut is not None
        return True

    @property
    def row(self) -> str | None:
        """The comparison row that checks it: ``"partial@2"`` for a measured partial
        recommendation (``diagnose compare --unfreeze 2``), else the strategy's name."""
        if self.strategy == "partial" and self.depth is not None:
            return f"partial@{self.depth}"
        return self.strategy
