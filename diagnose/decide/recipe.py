"""What a recommendation trains with: LRs from the training plan, epochs from the target size.

Everything here reads :class:`diagnose.training.TrainConfig`'s defaults and
:func:`diagnose.training.plan` instead of restating them, so the rule prior, the
race and the engine agree on one discriminative-LR formula and one optimiser.
"""

from __future__ import annotations

import math

from diagnose.training import TrainConfig, plan

__all__ = [
    "BACKBONE_LR_RATIO",
    "DISCRIMINATIVE_FACTOR",
    "EPOCHS_AT_REFERENCE",
    "MAX_EPOCHS",
    "MIN_EPOCHS",
    "OPTIMIZER",
    "REFERENCE_PER_CLASS",
    "TRAIN_DEFAULTS",
    "group_lrs",
    "recommended_epochs",
]


# The training defaults the recommendation is for: read from TrainConfig, never restated.
TRAIN_DEFAULTS = TrainConfig()


DISCRIMINATIVE_FACTOR = TRAIN_DEFAULTS.discriminative_factor


BACKBONE_LR_RATIO = TRAIN_DEFAULTS.backbone_ratio


OPTIMIZER = f"SGD, momentum {TRAIN_DEFAULTS.momentum:g}"


# Epochs: EPOCHS_AT_REFERENCE at REFERENCE_PER_CLASS images per class, scaled by
# sqrt(reference / n) (fewer images need more passes for a similar number of updates),
# clamped so small targets are not memorised and large ones still converge.
EPOCHS_AT_REFERENCE = 15.0


REFERENCE_PER_CLASS = 100.0


MIN_EPOCHS, MAX_EPOCHS = 5, 50


def group_lrs(strategy: str, blocks: list[str], unfreeze: list[str], head_lr: float) -> dict:
    """The LR of the head and of every block that trains, from the training plan itself.

    One formula for the whole toolkit: :func:`diagnose.training.plan`'s main
    stage (discriminative: ``head_lr / 2.6**depth``; otherwise the blocks in
    ``unfreeze`` at ``head_lr * 0.1``). ``"head"`` is ``head_lr``: LP-FT's
    probe LR, the one its fine-tuning stage scales down.
    """
    if not blocks:
        return {"head": float(head_lr)}
    chosen = list(unfreeze) if strategy == "partial" and unfreeze else None
    main = plan(strategy, list(blocks), TrainConfig(head_lr=float(head_lr), unfreeze=chosen))
    lrs = main.stages[-1].lr
    keep = set(blocks) if strategy == "discriminative" else set(unfreeze)
    return {"head": float(head_lr), **{g: lrs[g] for g in blocks if g in keep and g in lrs}}


def recommended_epochs(n_per_class: float, strategy: str) -> int:
    """Epochs of a full fine-tuning run for ``n_per_class`` labelled images per class.

    ``15 sqrt(100 / n)`` clamped to 5..50 (twice that for a head on cached
    features): :data:`EPOCHS_AT_REFERENCE`, :data:`REFERENCE_PER_CLASS`,
    :data:`MIN_EPOCHS` and :data:`MAX_EPOCHS`.
    """
    base = EPOCHS_AT_REFERENCE * math.sqrt(REFERENCE_PER_CLASS / max(n_per_class, 1.0))
    if strategy == "feature_extraction":
        base *= 2  # epochs on cached features are nearly free
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(base))))
