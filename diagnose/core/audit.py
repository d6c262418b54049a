"""An audit of a fine-tuned checkpoint, typed: what changed per block and what the source lost.

Written by :func:`diagnose.workflows.checkpoint_audit.audit` (results.json of
kind ``"audit"``) and read by its report. CKA and agreement are in [0, 1]
(1 = unchanged); accuracies and drops are fractions; weight drift is the
relative L2 change of a block's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnose.core.record import (
    Record,
    as_bool,
    as_dict,
    as_number,
    as_record_or_empty,
    as_records,
    as_text,
    as_tuple,
    read_as,
)

__all__ = ["Audit", "AuditLayer", "SourceAccuracy"]


@dataclass(frozen=True)
class AuditLayer(Record):
    """One block: linear CKA of pretrained vs fine-tuned features on source and target
    images, and the relative drift of its weights."""

    name: str | None = read_as(as_text)
    cka_source: float | None = read_as(as_number)
    cka_target: float | None = read_as(as_number)
    weight_drift: float | None = read_as(as_number)


@dataclass(frozen=True)
class SourceAccuracy(Record):
    """Source accuracy through the original head, before and after, overall and per class
    (``per_class`` rows hold ``class``, ``n``, ``pretrained``, ``finetuned``, ``drop``)."""

    pretrained: float | None = read_as(as_number)
    finetuned: float | None = read_as(as_number)
    drop: float | None = read_as(as_number)
    per_class: tuple | None = read_as(as_tuple)


@dataclass(frozen=True)
class Audit(Record):
    """The results of ``diagnose audit`` (see the module doc for units)."""

    schema: str | None = read_as(as_text)
    kind: str | None = read_as(as_text)
    model: dict | None = read_as(as_dict)
    finetuned: dict | None = read_as(as_dict)
    source: dict | None = read_as(as_dict)
    target: dict | None = read_as(as_dict)
    blocks: tuple | None = read_as(as_tuple)
    layers: tuple[AuditLayer, ...] | None = read_as(as_records(AuditLayer))
    source_accuracy: SourceAccuracy = read_as(as_record_or_empty(SourceAccuracy), SourceAccuracy())
    agreement: float | None = read_as(as_number)
    # True when the fine-tuned model's source outputs or weights are not finite.
    diverged: bool | None = read_as(as_bool)
    verdict: str | None = read_as(as_text)
    thresholds: dict | None = read_as(as_dict)
    preprocessing: dict | None = read_as(as_dict)
    warnings: tuple | None = read_as(as_tuple)
    environment: dict | None = read_as(as_dict)

    def threshold(self, key: str) -> float | None:
        """One of the verdict's thresholds (``"cka_unchanged"``, ...) as a number."""
        return as_number((self.thresholds or {}).get(key))
