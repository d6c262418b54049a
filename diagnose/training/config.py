"""The budget and hyper-parameters shared by every strategy of one comparison or race trial."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from diagnose.models import TORCH_FORMATS

__all__ = [
    "BN_MODES",
    "TrainConfig",
    "check_config",
]

BN_MODES = ("frozen", "train")


@dataclass
class TrainConfig:
    """The budget and hyper-parameters shared by every strategy of one comparison.

    Attributes:
        epochs: passes over the target training set (lp_ft: of its fine-tuning stage).
        batch_size: examples per optimiser step (also the evaluation batch).
        head_lr: LR of the new head (from the LR range test or ``--lr``).
        backbone_ratio: backbone LR / head LR for full_low_lr, partial, l2_sp and
            lp_ft's fine-tuning stage (0.1 = ten times lower).
        discriminative_factor: LR divisor per block going down (ULMFiT's 2.6).
        unfreeze: blocks ``partial`` trains; None means the last block.
        l2_sp_alpha: strength alpha of the L2-SP pull alpha/2 ||w - w0||^2.
        weight_decay: SGD weight decay (plain L2) of every trained group
            (l2_sp: of the head only).
        momentum: SGD momentum.
        bn: ``"frozen"``: BatchNorm modules in frozen blocks stay in eval mode
            (running statistics untouched); ``"train"``: they update their statistics.
        lp_epochs: epochs of lp_ft's linear-probe stage, on cached features.
        seed: seeds the new head, the random init of ``scratch`` and the batch order.
        lora_rank: the rank r of LoRA's update ``B A`` (``lora``).
        lora_alpha: LoRA's scale numerator: the update is ``B A * alpha / r``.
        lora_targets: names or name suffixes of the layers LoRA adapts; None: every
            ``nn.Linear`` and 2-D ``nn.Conv2d`` of the adapted blocks.
        adapted_blocks: the blocks LoRA adapts; None: every block.
        memory_format: the layout the network trains in (``"contiguous"`` or
            ``"channels_last"``); None: the layout measured once for the
            architecture and kept (:func:`diagnose.models.choose_layout`). A run of several strategies
            decides once, so every strategy, local or on Ray, trains in one layout.

    Example:
        >>> TrainConfig(epochs=5, head_lr=0.05).to_dict()["epochs"]
        5
    """

    epochs: int = 3
    batch_size: int = 64
    head_lr: float = 0.01
    backbone_ratio: float = 0.1
    discriminative_factor: float = 2.6
    unfreeze: list[str] | None = None
    l2_sp_alpha: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    bn: str = "frozen"
    lp_epochs: int = 50
    seed: int = 0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] | None = None
    adapted_blocks: list[str] | None = None
    memory_format: str | None = None

    def to_dict(self) -> dict:
        """Plain-JSON copy of every field."""
        out = asdict(self)
        for key in ("unfreeze", "lora_targets", "adapted_blocks"):
            value = getattr(self, key)
            out[key] = None if value is None else [str(b) for b in value]
        return out


def _positive(value: Any, name: str, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        what = "a positive int" if integer else "a positive finite number"
        raise ValueError(
            f"The '{name}' parameter of TrainConfig must be {what}. Got {value!r} instead."
        )


def check_config(config: TrainConfig) -> None:
    """Raise ValueError/TypeError naming the first field of ``config`` out of its range."""
    if not isinstance(config, TrainConfig):
        raise TypeError(
            f"The 'config' parameter must be a TrainConfig. Got {type(config).__name__} instead."
        )
    for name in ("epochs", "batch_size", "lp_epochs", "lora_rank"):
        _positive(getattr(config, name), name, integer=True)
    for name in ("head_lr", "backbone_ratio", "discriminative_factor", "lora_alpha"):
        _positive(getattr(config, name), name)
    for name in ("l2_sp_alpha", "weight_decay", "momentum"):
        value = getattr(config, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(
                f"The '{name}' parameter of TrainConfig must be a finite number >= 0. Got {value!r} instead."
            )
    for name in ("lora_targets", "adapted_blocks"):
        value = getattr(config, name)
        if value is not None and (
            isinstance(value, str) or not value or not all(isinstance(v, str) for v in value)
        ):
            raise ValueError(
                f"The '{name}' parameter of TrainConfig must be None or a non-empty list of "
                f"module names. Got {value!r} instead."
            )
    if config.memory_format is not None and config.memory_format not in TORCH_FORMATS:
        raise ValueError(
            "The 'memory_format' parameter of TrainConfig must be None, 'contiguous' or "
            f"'channels_last'. Got {config.memory_format!r} instead."
        )
    if config.bn not in BN_MODES:
        raise ValueError(
            f"The 'bn' parameter of TrainConfig must be one of {set(BN_MODES)}. Got {config.bn!r} instead."
        )
