"""What the recommendation's decisions read from an assessment, typed.

``assess`` builds an :class:`Evidence` from its own typed measurements (the
per-layer :class:`~diagnose.core.LayerResult` rows, the LR range test's
suggestion, the domains' classes and split sizes) and hands it to the rule prior
(:func:`diagnose.decide.recommend`), the race's candidates and the measured
recommendation; none of them reads a results dict. :meth:`Evidence.of` is the
one place a results.json dict becomes evidence (``recommend(results)`` in a
user's script, or a comparison resumed from disk).

Example:
    >>> ev = Evidence.of(assess_result.to_dict())
    >>> ev.per_class, [layer.name for layer in ev.layers]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diagnose.core.layer import LayerResult

__all__ = ["Evidence"]


@dataclass(frozen=True)
class Evidence:
    """An assessment's measurements that the decisions read.

    Attributes:
        layers: the probed blocks' rows, in forward order.
        suggested_lr: the LR range test's head LR (None: no suggestion).
        source_classes, target_classes: the domains' class names (None: unknown).
        target_labelled: the target's labelled train+val images (0: unknown).
    """

    layers: tuple[LayerResult, ...] = ()
    suggested_lr: float | None = None
    source_classes: tuple | None = None
    target_classes: tuple | None = None
    target_labelled: int = 0

    @property
    def per_class(self) -> float:
        """Labelled target images per class a fine-tuning run can learn from or select on."""
        n_classes = max(1, len(self.target_classes or ()) or 1)
        return self.target_labelled / n_classes if self.target_labelled else 0.0

    @classmethod
    def of(cls, results: Mapping[str, Any] | Evidence) -> Evidence:
        """The evidence in a results dict (an assessment's results.json); evidence as it is."""
        if isinstance(results, Evidence):
            return results
        layers = tuple(
            LayerResult.from_dict(x) for x in results.get("layers") or [] if isinstance(x, Mapping)
        )
        target = results.get("target") or {}
        labelled = (target.get("n_train") or 0) + (target.get("n_val") or 0) or target.get("n_used")
        return cls(
            layers=layers,
            suggested_lr=(results.get("lr_find") or {}).get("suggested_lr"),
            source_classes=_classes(results.get("source")),
            target_classes=_classes(target),
            target_labelled=int(labelled or 0),
        )


def _classes(domain: Mapping | None) -> tuple | None:
    classes = (domain or {}).get("classes")
    return tuple(classes) if classes else None
