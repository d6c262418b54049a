"""From measurements to a fine-tuning recommendation.

A pure function: the assessment's results dict in, a recommendation dict out,
no I/O. Every reason cites the measurement and its value, and
``would_change_if`` says which measurement would flip the decision.

The rules follow the published evidence (see shared/REFERENCES.md):
- pretraining helps only where the pretrained probe beats the random-init
  control probe (Yosinski et al. 2014);
- an input-level shift (a large domain gap already at the first block, e.g.
  noise or inverted contrast) wants the early blocks tuned; an output-level
  shift (little input gap, last-layer probe below an intermediate layer) wants
  the last blocks and the head tuned (Lee et al. 2023, surgical fine-tuning);
- small targets whose last-layer features already separate the classes are
  served best by feature extraction (a new head on frozen features);
- the head LR comes from the LR range test, the backbone trains 10x lower,
  and with discriminative LRs each block further down is 2.6x lower (ULMFiT).
"""

from __future__ import annotations

import math

from diagnose.strategies import STRATEGY_NAMES

__all__ = ["STRATEGIES", "recommend"]

STRATEGIES = STRATEGY_NAMES

DISCRIMINATIVE_FACTOR = 2.6
BACKBONE_LR_RATIO = 0.1
DEFAULT_HEAD_LR = 1e-2
INPUT_GAP_PAD = 1.0  # PAD above this at the first block: the inputs themselves differ
PROBE_DROP = 0.05  # last-layer probe this far below the best layer: late features do not fit
BENEFIT_MIN = 0.02  # pretrained probe must beat the control by this much to count
SMALL_PER_CLASS = 100


def _acc(layer: dict, which: str) -> float | None:
    probe = (layer.get("probe") or {}).get(which)
    return None if probe is None else probe.get("accuracy")


def _epochs(n_per_class: float, strategy: str) -> int:
    # Fewer examples need more passes for the same number of updates; the cap keeps
    # small-data runs from memorising (the comparison issue measures overfitting).
    base = 15.0 * math.sqrt(100.0 / max(n_per_class, 1.0))
    if strategy == "feature_extraction":
        base *= 2  # epochs on cached features are nearly free
    return int(min(50, max(5, round(base))))


def recommend(results: dict) -> dict:
    """Recommend a strategy, blocks to unfreeze and LRs from an assessment's results.

    Example::

        rec = recommend(assess_result.to_dict())
        rec["strategy"], rec["lr"]["head"], rec["reasons"][0]
    """
    layers = [layer for layer in results.get("layers", []) if _acc(layer, "target") is not None]
    names = [layer["name"] for layer in results.get("layers", [])]
    lr_find = results.get("lr_find") or {}
    head_lr = lr_find.get("suggested_lr")
    reasons: list[str] = []
    would_change: list[str] = []
    if head_lr is None:
        head_lr = DEFAULT_HEAD_LR
        reasons.append(
            f"The LR range test gave no suggestion, so the head LR falls back to {DEFAULT_HEAD_LR:g}."
        )
    else:
        reasons.append(
            f"The LR range test's steepest stable descent is at {head_lr:.3g}: the head LR."
        )

    target = results.get("target") or {}
    n_classes = max(1, len(target.get("classes") or []) or 1)
    n_train = int(target.get("n_train") or target.get("n") or 0)
    n_per_class = n_train / n_classes if n_train else 0.0

    if not layers:
        return {
            "strategy": "full_low_lr",
            "unfreeze": names,
            "lr": {"head": head_lr, **{n: head_lr * BACKBONE_LR_RATIO for n in names}},
            "epochs": _epochs(n_per_class, "full_low_lr"),
            "weight_decay": 1e-4,
            "optimizer": "SGD, momentum 0.9",
            "confidence": "low",
            "reasons": reasons
            + ["No target probe could be measured, so nothing supports freezing any block."],
            "would_change_if": ["Labelled target data let the layer-wise probes run."],
        }

    target_acc = [_acc(layer, "target") for layer in layers]
    control_acc = [_acc(layer, "control") for layer in layers]
    best_i = max(range(len(layers)), key=lambda i: target_acc[i])
    best, last = target_acc[best_i], target_acc[-1]
    drop = best - last
    controls = [c for c in control_acc if c is not None]
    benefit = best - max(controls) if controls else None
    gaps = [(layer.get("gap") or {}).get("pad") for layer in layers]
    first_gap = gaps[0]
    pvals = [(layer.get("gap") or {}).get("mmd_pvalue") for layer in layers]
    block_names = [layer["name"] for layer in layers]

    no_benefit = benefit is not None and benefit < BENEFIT_MIN
    if first_gap is not None and first_gap >= INPUT_GAP_PAD and (pvals[0] or 0) < 0.05:
        strategy, unfreeze = "full_low_lr", block_names
        reasons.append(
            f"The domain gap is large already at the first block ({block_names[0]}: PAD "
            f"{first_gap:.2f}, MMD p={pvals[0]:.3g}): an input-level shift, which is served by "
            "tuning the early blocks too (Lee et al. 2023), so every block trains, at a low LR."
        )
        would_change.append(
            f"PAD at {block_names[0]} below {INPUT_GAP_PAD:.1f}: then the early blocks could stay frozen."
        )
        confidence = "high" if first_gap >= 1.5 and not no_benefit else "medium"
    elif no_benefit:
        strategy, unfreeze = "full_low_lr", block_names
        reasons.append(
            "Frozen pretrained features do not beat random ones here, so no block can stay "
            "frozen: everything trains, and training from scratch is the baseline to compare "
            "against (diagnose compare measures both)."
        )
        would_change.append(
            f"The best pretrained probe beating the control by more than {BENEFIT_MIN:.2f}."
        )
        confidence = "low"
    elif drop >= PROBE_DROP and best_i < len(layers) - 1:
        strategy = "partial"
        unfreeze = block_names[best_i + 1 :]
        reasons.append(
            f"The target probe peaks at {block_names[best_i]} ({best:.3f}) and falls to {last:.3f} "
            f"at the last block: the later blocks discard what the target needs (an output-level "
            f"shift), so the blocks after {block_names[best_i]} and the head are tuned."
        )
        would_change.append(
            f"The last-layer probe within {PROBE_DROP:.2f} of the best layer: then a new head alone would do."
        )
        confidence = "high" if drop >= 2 * PROBE_DROP else "medium"
    elif n_per_class and n_per_class < SMALL_PER_CLASS:
        strategy, unfreeze = "feature_extraction", []
        reasons.append(
            f"The last-layer probe is within {drop:.3f} of the best layer ({last:.3f}) and the "
            f"target has {n_per_class:.0f} training images per class: a new head on frozen "
            "features is the least likely to overfit."
        )
        would_change.append(
            f"More than {SMALL_PER_CLASS} training images per class, which would afford fine-tuning."
        )
        confidence = "high" if drop < PROBE_DROP / 2 else "medium"
    else:
        strategy, unfreeze = "discriminative", block_names
        reasons.append(
            f"The last-layer probe is close to the best layer ({last:.3f} vs {best:.3f}) and the "
            f"target has {n_per_class:.0f} images per class, enough to fine-tune everything with "
            f"LRs falling by {DISCRIMINATIVE_FACTOR} per block going down."
        )
        would_change.append(
            f"Fewer than {SMALL_PER_CLASS} images per class: then feature extraction would be safer."
        )
        confidence = "medium"

    if no_benefit:
        reasons.append(
            f"The pretrained probe's best accuracy ({best:.3f}) is within {benefit:+.3f} of the "
            f"random-init control ({max(controls):.3f}): frozen pretrained features buy little "
            "on this target."
        )
    elif benefit is not None:
        reasons.append(
            f"Pretraining helps: the best pretrained probe ({best:.3f}) beats the random-init "
            f"control ({max(controls):.3f}) by {benefit:.3f}."
        )

    rgn = {layer["name"]: layer.get("rgn") for layer in layers if layer.get("rgn") is not None}
    if rgn:
        top = max(rgn, key=rgn.get)
        quiet = [n for n, v in rgn.items() if v < 0.25]
        reasons.append(
            f"Relative gradient norms (Auto-RGN) are largest at {top}"
            + (f" and below 0.25 at {', '.join(quiet)}" if quiet else "")
            + ": where the target's gradient pulls hardest (a signal, not yet a rule)."
        )

    lr = {"head": head_lr}
    if strategy == "discriminative":
        for depth, name in enumerate(reversed(block_names), start=1):
            lr[name] = head_lr / DISCRIMINATIVE_FACTOR**depth
    else:
        lr.update({name: head_lr * BACKBONE_LR_RATIO for name in unfreeze})

    return {
        "strategy": strategy,
        "unfreeze": list(unfreeze),
        "lr": lr,
        "epochs": _epochs(n_per_class, strategy),
        "weight_decay": 1e-4,
        "optimizer": "SGD, momentum 0.9",
        "confidence": confidence,
        "reasons": reasons,
        "would_change_if": would_change,
    }
