"""Reading training curves: overfitting detection and the best-validation state.

Example:
    >>> detect_overfitting([1.0, 0.8, 0.6, 0.5], [0.9, 0.8, 0.85, 0.9])
    {'epoch': 4, 'detail': 'validation loss rose for 2 consecutive epochs ...'}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "BestState",
    "detect_overfitting",
    "finite_or_none",
]


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when finite, else None (results hold no NaN or inf)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def detect_overfitting(
    train_loss: Sequence[float | None],
    val_loss: Sequence[float | None],
    epochs: Sequence[int] | None = None,
    patience: int = 2,
) -> dict | None:
    """The first epoch at which validation loss has risen for ``patience`` consecutive
    epochs while training loss fell over the same epochs, or None.

    ``train_loss[i]`` and ``val_loss[i]`` belong to evaluation ``i`` (epoch
    ``epochs[i]``, default ``i + 1``); a None value breaks a run.

    Returns:
        ``{"epoch": int, "detail": str}`` (the epoch where the rule first holds) or None.

    Example:
        >>> detect_overfitting([1.0, 0.8, 0.6, 0.5], [0.9, 0.8, 0.85, 0.9])["epoch"]
        4
    """
    if len(train_loss) != len(val_loss):
        raise ValueError(
            f"'train_loss' and 'val_loss' must have the same length. Got {len(train_loss)} and {len(val_loss)}."
        )
    epochs = list(range(1, len(val_loss) + 1)) if epochs is None else list(epochs)
    run = 0
    for i in range(1, len(val_loss)):
        t0, t1, v0, v1 = train_loss[i - 1], train_loss[i], val_loss[i - 1], val_loss[i]
        if None in (t0, t1, v0, v1):
            run = 0
            continue
        run = run + 1 if (v1 > v0 and t1 < t0) else 0
        if run >= patience:
            start = i - patience
            return {
                "epoch": int(epochs[i]),
                "detail": (
                    f"validation loss rose for {patience} consecutive epochs "
                    f"({val_loss[start]:.4g} at epoch {epochs[start]} -> {v1:.4g} at epoch {epochs[i]}) "
                    f"while training loss fell ({train_loss[start]:.4g} -> {t1:.4g})"
                ),
            }
    return None


class BestState:
    """Keeps the state of the best evaluation: highest validation accuracy, ties to lower loss.

    ``offer`` calls ``snapshot()`` (e.g. a CPU copy of the state dict) only
    when the evaluation is the best so far, so only one extra state is held.

    Example:
        >>> best = BestState()
        >>> best.offer(1, 0.7, 0.9, lambda: "s1"); best.offer(2, 0.6, 0.8, lambda: "s2")
        True
        False
        >>> best.epoch, best.state
        (1, 's1')
    """

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.val_accuracy: float | None = None
        self.val_loss: float | None = None
        self.state: Any = None

    def offer(
        self,
        epoch: int,
        val_accuracy: float | None,
        val_loss: float | None,
        snapshot: Callable[[], Any],
    ) -> bool:
        """Record this evaluation if it is the best so far; return whether it was."""
        if val_accuracy is None:
            return False
        loss = math.inf if val_loss is None else val_loss
        better = self.epoch is None or val_accuracy > self.val_accuracy
        if not better and val_accuracy == self.val_accuracy:
            better = loss < (math.inf if self.val_loss is None else self.val_loss)
        if better:
            self.epoch, self.val_accuracy, self.val_loss = int(epoch), float(val_accuracy), val_loss
            self.state = snapshot()
        return better
