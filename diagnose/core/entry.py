"""A strategy's results entry, typed: what it scored, what it forgot, what it cost.

One :class:`StrategyEntry` per strategy of a comparison (``results.json``
``strategies``), written by the training engine
(:func:`diagnose.training.entry.build_entry`) and read by the selection, the
report and ``--resume``. Three shapes share the class:

- a finished run (``status`` "ok" or "diverged"): every field;
- a failed run: ``name``, ``status`` "failed" and ``message`` only;
- several seeds (:mod:`diagnose.training.seeds`): the means in the sections,
  plus ``seeds``, ``per_seed`` (each seed's own entry) and ``spread``.

``to_dict()`` writes each shape exactly as it was read.
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnose.core.record import (
    Record,
    as_dict,
    as_integer,
    as_number,
    as_number_map,
    as_record,
    as_record_or_empty,
    as_records,
    as_text,
    as_tuple,
    read_as,
)

__all__ = [
    "Cost",
    "Divergence",
    "Forgetting",
    "StrategyEntry",
    "TargetScores",
]

# Written only for a run that finished (a failed run has none of them).
_FINISHED_ONLY = ("diverged", "overfitting", "config", "target", "forgetting", "cost", "curves")
# Written only for an entry merged over several seeds.
_SEEDS_ONLY = ("seeds", "per_seed", "spread")


@dataclass(frozen=True)
class Divergence(Record):
    """Where training first met a non-finite loss (1-based ``step``, 0-based ``epoch``)."""

    step: int | None = read_as(as_integer)
    epoch: int | None = read_as(as_integer)
    lr: float | None = read_as(as_number)
    loss: str | None = read_as(as_text)
    stage: str | None = read_as(as_text)


@dataclass(frozen=True)
class TargetScores(Record):
    """Accuracy (fractions) of the best epoch's weights on the target's val and test splits."""

    val_accuracy: float | None = read_as(as_number)
    test_accuracy: float | None = read_as(as_number)
    best_epoch: int | None = read_as(as_integer)
    val_loss: float | None = read_as(as_number)


@dataclass(frozen=True)
class Forgetting(Record):
    """What fine-tuning did to the source task (accuracies as fractions, CKA in [0, 1])."""

    source_accuracy: float | None = read_as(as_number)
    source_accuracy_before: float | None = read_as(as_number)
    source_accuracy_drop: float | None = read_as(as_number)
    agreement: float | None = read_as(as_number)
    cka: dict[str, float | None] | None = read_as(as_number_map)
    weight_drift: dict[str, float | None] | None = read_as(as_number_map)

    def mean_cka(self) -> float | None:
        """The mean CKA to the pretrained features over the blocks that have one."""
        vals = [v for v in (self.cka or {}).values() if v is not None]
        return sum(vals) / len(vals) if vals else None


@dataclass(frozen=True)
class Cost(Record):
    """What the run cost: seconds, FLOPs (counted, not estimated), steps and peak memory."""

    wall_s: float | None = read_as(as_number)
    flops: int | None = read_as(as_number)
    flops_per_step: int | None = read_as(as_number)
    steps: int | None = read_as(as_integer)
    trainable_params: int | None = read_as(as_integer)
    peak_mem_bytes: int | None = read_as(as_number)
    peak_mem_kind: str | None = read_as(as_text)
    phases: tuple | None = read_as(as_tuple)


@dataclass(frozen=True)
class StrategyEntry(Record):
    """One strategy's results entry (see the module doc for its three shapes).

    Attributes:
        name: the strategy's name (one of ``diagnose.core.STRATEGY_NAMES``).
        status: "ok", "diverged", "failed" or, for seeds still missing, "incomplete".
        message: why it failed or diverged, in words (None when ok).
        diverged: where the loss first became non-finite.
        overfitting: ``{"epoch", "detail"}`` when the val loss rose for a while.
        config: the run's settings (LRs per group, stages, frozen and trainable blocks, ...).
        target, forgetting, cost: the three measurements.
        curves: one dict per evaluation (epoch, losses, accuracies).
        seeds, per_seed, spread: several seeds only (``spread[group][field]`` holds
            ``std``, ``min``, ``max`` and ``n`` of that field over the seeds).
    """

    name: str | None = read_as(as_text)
    status: str | None = read_as(as_text)
    message: str | None = read_as(as_text)
    diverged: Divergence | None = read_as(as_record(Divergence))
    overfitting: dict | None = read_as(as_dict)
    config: dict | None = read_as(as_dict)
    target: TargetScores = read_as(as_record_or_empty(TargetScores), TargetScores())
    forgetting: Forgetting = read_as(as_record_or_empty(Forgetting), Forgetting())
    cost: Cost = read_as(as_record_or_empty(Cost), Cost())
    curves: tuple | None = read_as(as_tuple)
    seeds: tuple | None = read_as(as_tuple)
    # Each seed's own entry (a reader that names the class when it runs: a self-reference).
    per_seed: tuple[StrategyEntry, ...] | None = read_as(lambda v: as_records(StrategyEntry)(v))
    spread: dict | None = read_as(as_dict)

    def emits(self, name: str) -> bool:
        if name in _FINISHED_ONLY:
            return self.finished
        if name in _SEEDS_ONLY:
            return self.seeds is not None
        return True

    @property
    def finished(self) -> bool:
        """Whether a run finished (its settings are recorded), whatever its status."""
        return self.config is not None

    @property
    def ok(self) -> bool:
        """Whether it finished without diverging."""
        return self.status == "ok"

    def spread_std(self, group: str, key: str) -> float | None:
        """The seed-to-seed standard deviation of ``group.key`` (None for one seed)."""
        cell = ((self.spread or {}).get(group) or {}).get(key)
        return as_number(cell.get("std")) if isinstance(cell, dict) else None

    @property
    def n_seeds(self) -> int:
        """How many seeds produced this entry's numbers (1 for a single run)."""
        return len(self.seeds) if self.seeds else 1
