"""The checks and resolution of ``compare``'s parameters, before anything is loaded or trained.

Every error here is raised before hours of training, not after.
"""

from __future__ import annotations

from typing import Any

from diagnose.core import STRATEGY_NAMES, Arg, Recommendation, UsageError, check_params
from diagnose.models import LORA_EXTRA, import_peft, lora_targets, peft_available
from diagnose.training import (
    TrainConfig,
    check_config,
    check_executor,
)

__all__ = [
    "check_compare_args",
    "lora_settings",
    "parse_strategies",
    "resolve_unfreeze",
]


def check_compare_args(
    *,
    epochs: int,
    lr: float | None,
    bn: str,
    max_forgetting: float | None,
    resume: bool,
    out: Any,
    executor: str,
    ray_address: str | None,
    seeds: int,
    **declared: Any,
) -> None:
    """:class:`~diagnose.core.ParamError` naming the first of ``compare``'s parameters
    that is out of its declared range (:data:`diagnose.core.PARAMS`); ``declared``: more
    of them (``batch_size``, ``max_samples``, ``image_size``, ``pool``)."""
    check_params(
        "compare", epochs=epochs, lr=lr, bn=bn, max_forgetting=max_forgetting, seeds=seeds,
        **declared,
    )  # fmt: skip
    if resume and out is None:
        raise UsageError(
            Arg("resume"), " needs ", Arg("out"), ", the directory of the run to continue."
        )
    check_executor(executor, ray_address, "compare")


def resolve_unfreeze(
    unfreeze: list[str] | list[int] | int | None,
    names: list[str],
    blocks: list[str],
    recommendation: Recommendation | None,
) -> tuple[list[str], list[str] | None]:
    """``(strategy rows, blocks partial unfreezes)`` from ``compare``'s ``unfreeze``.

    Several depths (a list of ints) make one row ``partial@k`` per depth; one
    int ``k`` unfreezes the last ``k`` blocks; None takes the assessment's
    recommendation (``recommendation``) when it recommends ``partial``.
    """
    names = list(names)
    if (
        isinstance(unfreeze, (list, tuple))
        and unfreeze
        and all(isinstance(k, int) and not isinstance(k, bool) for k in unfreeze)
    ):
        # Several depths: partial runs once per depth, each its own row "partial@k".
        bad = [k for k in unfreeze if not 1 <= k <= len(blocks)]
        if bad:
            raise UsageError(
                Arg("unfreeze"), f" depths must be between 1 and {len(blocks)} blocks. Got {bad}."
            )
        depths = sorted(set(unfreeze))
        if "partial" not in names:
            names.append("partial")
        at = names.index("partial")
        names[at : at + 1] = [f"partial@{k}" for k in depths]
        unfreeze = None
    elif isinstance(unfreeze, int):
        if not 1 <= unfreeze <= len(blocks):
            raise UsageError(
                Arg("unfreeze"), f" must be between 1 and {len(blocks)} blocks. Got {unfreeze}."
            )
        unfreeze = blocks[-unfreeze:]
    elif unfreeze is None and recommendation is not None and recommendation.strategy == "partial":
        rec = recommendation
        chosen = rec.unfreeze_blocks if rec.unfreeze_blocks is not None else rec.unfreeze
        unfreeze = None if chosen is None else list(chosen)
    return names, unfreeze


def parse_strategies(
    value: str | list[str] | tuple[str, ...], warnings: list[str] | None = None
) -> list[str]:
    """``all`` or a comma-separated subset of the strategy names, in canonical order.

    ``all`` leaves out ``lora`` when peft cannot be imported, with a warning in
    ``warnings``; naming ``lora`` without peft is the one-line ImportError of the extra.
    """
    names = list(STRATEGY_NAMES) if value == "all" else value
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)  # never the caller's list
    unknown = [n for n in names if n not in STRATEGY_NAMES]
    if unknown or not names:
        raise UsageError(
            Arg("strategies"),
            f" must be 'all' or names from {', '.join(STRATEGY_NAMES)}. "
            f"Got {', '.join(unknown) or 'nothing'}.",
        )
    if "lora" in names and not peft_available():
        if value != "all":
            import_peft()  # raises the one-line error naming the extra
        names.remove("lora")
        if warnings is not None:
            warnings.append(
                f"lora was left out of 'all': it needs the peft library ({LORA_EXTRA})."
            )
    return [n for n in STRATEGY_NAMES if n in names]


def lora_settings(
    unfreeze: Any,
    blocks: list[str],
    rank: int,
    alpha: float,
    targets: str | list[str] | None,
    *,
    names: list[str],
    loaded: Any,
    bn: str,
    warnings: list[str],
) -> dict:
    """The TrainConfig fields of LoRA from ``compare``'s arguments, checked before training.

    Args:
        unfreeze: ``compare``'s ``unfreeze``: an int k (the last k blocks) or block names
            put LoRA on those blocks; anything else (None, several depths) on every block.
        blocks: the run's blocks.
        rank, alpha: ``lora_rank`` and ``lora_alpha``.
        targets: ``lora_targets``: names or suffixes, comma-separated or a list, or None.
        names: the strategies that run: the targets are resolved on the model (a name
            that matches no layer is an error now, not a failed row later) when ``lora`` runs.
        loaded: the :class:`diagnose.models.LoadedModel`.
        bn: ``compare``'s ``bn``: ``"train"`` does not apply to LoRA, which is said.
        warnings: receives that note.

    Returns:
        ``{"lora_rank", "lora_alpha", "lora_targets", "adapted_blocks"}``.
    """
    check_params("compare", lora_rank=rank, lora_alpha=alpha)
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()] or None
    # The blocks an explicit unfreeze names (an int k: the last k; several depths: none).
    adapted = None if unfreeze is None else resolve_unfreeze(unfreeze, [], blocks, None)[1]
    fields = {"lora_rank": rank, "lora_alpha": alpha, "lora_targets": targets,
              "adapted_blocks": None if adapted is None else list(adapted)}  # fmt: skip
    check_config(TrainConfig(**fields))  # TrainConfig's own checks, before any training
    if "lora" in names:
        lora_targets(loaded.model, blocks, loaded.head, adapted=adapted, targets=targets)
        if bn == "train":
            warnings.append(
                "lora keeps every BatchNorm's statistics frozen (the adapter alone holds the "
                "change): --bn train applies to the other strategies."
            )
    return fields
