"""The recommendation, measured: run the trial race on the target and recommend its pick.

:func:`measured_recommendation` is the step of ``diagnose assess`` after its
measurements: the rule prior (:func:`diagnose.decide.rules.recommend`) orders
and prunes the candidates (:mod:`diagnose.decide.candidates`), the race
(:mod:`diagnose.decide.race`) trains them on the target's train+val images, and the
winner, with its evidence and uncertainty, becomes ``results["recommendation"]``.
A headless backbone is raced under a new head, as every candidate trains one
anyway. With ``trial_budget=0``, or when the race cannot run (no labels),
the recommendation is the prior, marked ``measured: false``.

Either way ``unfreeze`` lists every module that trains, in forward order,
and ``unfreeze_blocks`` the probed blocks the engine's ``partial`` trains.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from diagnose.core import Evidence, Recommendation
from diagnose.data import materialize_readable
from diagnose.decide.candidates import RACE_STRATEGIES, Candidate, build_candidates
from diagnose.decide.front import learning_forgetting_front, race_front_rows
from diagnose.decide.race import run_race
from diagnose.decide.race_reasons import race_reasons
from diagnose.decide.race_scoring import scoring_folds
from diagnose.decide.recipe import recommended_epochs
from diagnose.decide.rules import SAFE_FORGETTING
from diagnose.models import (
    BODY,
    LORA_EXTRA,
    NEW_HEAD,
    cut_description,
    lora_targets,
    peft_available,
    trainable_modules,
    unprefixed,
    with_new_head,
)
from diagnose.training import TrainConfig, plan

__all__ = [
    "DEFAULT_TRIAL_BUDGET",
    "measured_recommendation",
    "race_pool",
    "with_modules",
]

# The race may spend this fraction of the full sweep's training FLOPs (every
# candidate at the full epochs): successive halving with ETA = 3 over about 20
# configurations needs about that much to carry its best few to the full epochs.
DEFAULT_TRIAL_BUDGET = 0.2


def with_modules(
    rec: Recommendation, model: nn.Module | None, blocks: list[str], head: str | None
) -> Recommendation:
    """``rec`` with ``unfreeze`` as every trainable module and ``unfreeze_blocks`` as blocks."""
    groups = tuple(b for b in rec.unfreeze or () if b in blocks)
    if model is None or head is None or not blocks:
        return rec.with_fields(unfreeze_blocks=groups)
    return rec.with_fields(
        unfreeze_blocks=groups,
        unfreeze=tuple(trainable_modules(model, blocks, head, list(groups))),
        cut=cut_description(model, blocks, head, list(groups)),
    )


def _unmeasured(prior: Recommendation, model, blocks, head, why: str) -> Recommendation:
    return with_modules(prior, model, blocks, head).with_fields(
        measured=False,
        unmeasured_reason=why,
        prior={"strategy": prior.strategy, "confidence": prior.confidence},
        trials=None,
    )


def _lr_per_group(cand, blocks: list[str], epochs: int) -> dict[str, float]:
    p = plan(cand.strategy, blocks, cand.config(blocks, epochs=epochs, batch_size=1, seed=0))
    return {g: float(v) for g, v in p.stages[-1].lr.items()}


def race_pool(tgt, used: np.ndarray, split: dict, prep, warnings: list[str]):
    """The target's labelled train+val images for the race, and train/val positions in them.

    ``used`` are the domain indices the assessment used and ``split`` its
    ``{"train", "val", "test"}`` positions into them; the test split is never read.
    Returns ``((x, y), {"train", "val"})`` or ``(None, None)`` (with a warning when the
    images do not fit in memory).
    """
    idx = np.sort(np.concatenate([split["train"], split["val"]]))
    try:
        x, y, gone = materialize_readable(tgt, used[idx], prep, warnings)
    except ValueError as exc:  # too large to hold in memory: the prior stands, said so
        warnings.append(f"The trial race was skipped: {exc}")
        return None, None
    # An item that failed to read now (it read at capture) is left out, positions renumbered.
    kept = np.ones(len(idx), dtype=bool)
    kept[gone] = False
    row = np.cumsum(kept) - 1
    labelled = (y >= 0).numpy()
    pos = {k: np.searchsorted(idx, split[k]) for k in ("train", "val")}
    pos = {k: row[v[kept[v]]] for k, v in pos.items()}
    pos = {k: v[labelled[v]] for k, v in pos.items()}
    if len(pos["train"]) < 2:
        return None, None
    return (x, y), pos


def _race_model(model: nn.Module, head: str | None, blocks: list[str], x, warnings: list[str]):
    """``(net, head, blocks)`` the race trains: the model itself, or, when it has no
    classification head, the model under a new head (:func:`diagnose.models.with_new_head`)."""
    if head is not None:
        return model, head, list(blocks)
    net = with_new_head(model, x[:1].to(next(model.parameters()).device))
    warnings.append(
        "The model has no classification head: the race trained a new linear head on its "
        f"{net.head.in_features} output features, as it does for every model."
    )
    return net, NEW_HEAD, [f"{BODY}.{b}" for b in blocks]


def _trained(cand: Candidate, net: nn.Module, head: str, blocks: list[str], *, new_head: bool):
    """``(blocks that train, every module that trains, the cut's phrase)`` for ``cand``, in
    the user's own module names (a new head's wrapper prefix removed)."""
    depth_blocks = list(blocks[-cand.depth :]) if cand.depth else list(blocks)
    groups = [] if cand.strategy == "feature_extraction" else depth_blocks
    unfreeze = trainable_modules(net, blocks, head, groups)
    cut = cut_description(net, blocks, head, groups)
    if cand.strategy == "lora":
        unfreeze = [*lora_targets(net, blocks, head), head]
        cut = (
            f"LoRA of rank {cand.lora_rank} on {len(unfreeze) - 1} Linear and Conv2d layers of "
            f"every block; {head} trains in full"
        )
    elif cand.strategy == "bitfit":
        cut = f"the biases and normalisation parameters of every block train, and {head}"
    if new_head:
        groups, unfreeze = unprefixed(groups), unprefixed(unfreeze)
        cut = re.sub(rf"(?<![\w.]){BODY}\.", "", cut)  # the wrapper's prefix, once per name
    return groups, unfreeze, cut


def _race_strategies(warnings: list[str]) -> tuple[str, ...]:
    """The race's strategies: LoRA only where peft is installed (said so otherwise)."""
    if peft_available():
        return RACE_STRATEGIES
    warnings.append(f"LoRA was not raced: it needs the peft library ({LORA_EXTRA}).")
    return tuple(s for s in RACE_STRATEGIES if s != "lora")


def measured_recommendation(
    results: Mapping | Evidence,
    prior: Recommendation,
    *,
    model: nn.Module | None,
    head: str | None,
    blocks: list[str],
    pool: tuple[torch.Tensor, torch.Tensor] | None,
    splits: dict[str, np.ndarray] | None,
    trial_budget: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: bool,
    warnings: list[str],
    executor: str = "local",
    ray_address: str | None = None,
    meter: Any = None,
) -> Recommendation:
    """The assessment's recommendation: the race's pick, or the prior marked unmeasured.

    Args:
        results: the assessment's :class:`~diagnose.core.Evidence` (or its results so far).
        prior: the rule prior's recommendation for the same results.
        model: the pretrained network with its source head at ``head`` (copied, never changed).
        head: qualified name of the final ``nn.Linear`` (None: a headless backbone, raced
            under a new head).
        blocks: the probed blocks, in forward order (the engine's parameter groups).
        pool: ``(x, y)``: the target's labelled train+val images, preprocessed, and labels
            (None: no race). Positions in it are what ``splits`` index.
        splits: ``{"train", "val"}`` positions into ``pool``.
        trial_budget: fraction of the full sweep's FLOPs the race may spend; 0 skips it.
        batch_size, seed, device, progress: as for :func:`diagnose.assess`.
        warnings: receives what was skipped.
        executor, ray_address: ``"ray"`` runs the race's trials as Ray tasks
            (:mod:`diagnose.decide.race_ray`), on the cluster at ``ray_address`` if given.
        meter: a :class:`diagnose.measure.ForgettingMeter` of the source images (None: no
            source): the trials at the full epochs measure what they forgot, and
            ``trials.front`` lists the race's learning-forgetting front.
    """
    if trial_budget == 0:
        return _unmeasured(prior, model, blocks, head, "--trial-budget 0 skipped the race")
    missing = (
        "there is no model to train"
        if model is None
        else "the target has no labelled train+val images"
        if pool is None or splits is None
        else None
    )
    if missing:
        warnings.append(f"The recommendation is the rule prior, unmeasured: {missing}.")
        return _unmeasured(prior, model, blocks, head, missing)
    x, y = pool
    try:
        net, race_head, race_blocks = _race_model(model, head, blocks, x, warnings)
    except ValueError as exc:
        why = f"the model has no classification head and {exc}"
        warnings.append(f"The recommendation is the rule prior, unmeasured: {why}.")
        return _unmeasured(prior, model, blocks, head, why)
    y_np = y.numpy()
    ev = Evidence.of(results)
    n_classes = len(ev.target_classes or ()) or int(y.max()) + 1
    full_epochs = recommended_epochs(len(y_np) / n_classes, "full_low_lr")
    folds, protocol = scoring_folds(y_np, splits["train"], splits["val"], seed=seed)
    cands = build_candidates(
        ev, prior, safe_forgetting=SAFE_FORGETTING, strategies=_race_strategies(warnings)
    )
    meter = meter if head is not None else None  # a new head: no original head to ask
    trials = run_race(
        cands, folds, x, y, n_classes, model=net, head=race_head, blocks=race_blocks,
        full_epochs=full_epochs, budget=trial_budget, batch_size=batch_size, seed=seed,
        device=device, progress=progress, warnings=warnings, executor=executor,
        ray_address=ray_address, meter=meter, protocol=protocol,
    )  # fmt: skip
    front: dict = {}
    if meter is not None:
        rows = race_front_rows(trials.entries, meter.reference_source_accuracy)
        front = {"front_rows": tuple(rows), "front": tuple(learning_forgetting_front(rows))}
    trials = replace(trials, new_head=head is None, **front)
    if trials.pick is None:
        warnings.append("Every race candidate failed: the recommendation is the rule prior.")
        return _unmeasured(prior, model, blocks, head, "every race candidate failed")
    if trials.spend.unstable:
        warnings.append(
            f"The race measured {', '.join(trials.spend.unstable)} only at LRs too high for "
            "the full run (the training loss ended above where it started): its rank says "
            "nothing about a stable LR (trials.unstable)."
        )
    pick = trials.entry(trials.pick)
    reasons, change, confidence = race_reasons(trials, pick, prior)
    return _picked(pick.candidate, (net, race_head, race_blocks), blocks, head is None,
                   full_epochs, prior, reasons=reasons, change=change, confidence=confidence,
                   trials=trials.to_dict())  # fmt: skip


def _picked(
    cand: Candidate, race_net, blocks, new_head: bool, full_epochs: int, prior: Recommendation, *,
    reasons, change, confidence, trials,
) -> Recommendation:  # fmt: skip
    """The recommendation of the race's pick ``cand``, in the user's module names."""
    groups, unfreeze, cut = _trained(cand, *race_net, new_head=new_head)
    defaults = TrainConfig()
    return Recommendation(
        measured=True,
        strategy=cand.strategy,
        depth=cand.depth,
        unfreeze=tuple(unfreeze),
        unfreeze_blocks=tuple(groups),
        new_head=new_head,
        cut=cut,
        lr=_lr_per_group(cand, blocks, full_epochs),
        head_lr=cand.head_lr,
        epochs=full_epochs
        if cand.strategy != "feature_extraction"
        else max(full_epochs, defaults.lp_epochs),
        weight_decay=defaults.weight_decay,
        optimizer=f"SGD, momentum {defaults.momentum:g}",
        confidence=confidence,
        max_forgetting=prior.max_forgetting,
        reasons=tuple(reasons),
        would_change_if=tuple(change),
        lora=None
        if cand.lora_rank is None
        else {"rank": cand.lora_rank, "alpha": cand.lora_alpha, "targets": list(unfreeze[:-1])},
        prior={"strategy": prior.strategy, "confidence": prior.confidence,
               "reasons": list(prior.reasons or ())},
        trials=trials,
    )  # fmt: skip
