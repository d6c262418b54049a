"""An assessment's layer, typed: its probes, the source-target gap, the control CKA, Auto-RGN.

One :class:`LayerResult` per probed block (``results.json`` ``layers``, in
forward order), written by :func:`diagnose.measure.layers.layer_measurements`
(Auto-RGN added by the assessment) and read by the rule prior, the race's
candidate depths, the demo and the report. A measurement that failed or was
not run is None, with a warning in the results saying why.
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnose.core.record import (
    Record,
    as_bool,
    as_dict,
    as_integer,
    as_number,
    as_record,
    as_text,
    as_tuple,
    read_as,
)

__all__ = ["PROBE_ROLES", "LayerResult", "ProbeScore"]

# The three linear probes of a layer: the target on the pretrained features, the target
# on a random-init copy's features (the control), and the source on the pretrained ones.
PROBE_ROLES = ("target", "control", "source")


@dataclass(frozen=True)
class ProbeScore(Record):
    """A linear probe's held-out accuracy (fraction) with its Wilson 95% interval, and
    whether its final fit converged (``n_iter`` L-BFGS iterations)."""

    accuracy: float | None = read_as(as_number)
    ci: tuple | None = read_as(as_tuple)
    n_train: int | None = read_as(as_integer)
    n_test: int | None = read_as(as_integer)
    n_classes: int | None = read_as(as_integer)
    l2: float | None = read_as(as_number)
    cv_accuracy: float | None = read_as(as_number)
    chance: float | None = read_as(as_number)
    folds: int | None = read_as(as_integer)
    note: str | None = read_as(as_text)
    n_iter: int | None = read_as(as_integer)
    converged: bool | None = read_as(as_bool)
    stop_reason: str | None = read_as(as_text)


def _probes(v) -> dict[str, ProbeScore | None] | None:
    if not isinstance(v, dict):
        return None
    return {str(role): as_record(ProbeScore)(p) for role, p in v.items()}


@dataclass(frozen=True)
class LayerResult(Record):
    """One probed block of an assessment.

    Attributes:
        name: the module's qualified name (``"layer3"``, ``"blocks.4"``).
        dim: the width of its pooled features.
        probe: a :class:`ProbeScore` (or None) per role of :data:`PROBE_ROLES`.
        gap: the source-target gap on its features (``pad``, ``mmd2``,
            ``mmd_pvalue``, ``frechet``, ``coral``, sample sizes).
        cka_control: linear CKA between its pretrained and random-init features.
        rgn: its Auto-RGN (relative gradient norm, the largest block's is 1);
            written only when the assessment measured it.
    """

    name: str | None = read_as(as_text)
    dim: int | None = read_as(as_integer)
    probe: dict[str, ProbeScore | None] | None = read_as(_probes)
    gap: dict | None = read_as(as_dict)
    cka_control: dict | None = read_as(as_dict)
    rgn: float | None = read_as(as_number)

    def emits(self, name: str) -> bool:
        return name != "rgn" or self.rgn is not None

    def accuracy(self, role: str) -> float | None:
        """The held-out accuracy of the ``role`` probe (None when it did not run)."""
        score = (self.probe or {}).get(role)
        return None if score is None else score.accuracy

    def gap_value(self, key: str) -> float | None:
        """One gap measure (``"pad"``, ``"mmd2"``, ``"mmd_pvalue"``, ...) as a finite number."""
        return as_number((self.gap or {}).get(key))
