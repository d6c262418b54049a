"""From measurements to a fine-tuning recommendation.

A pure function: the assessment's :class:`~diagnose.core.Evidence` (or its results
dict) in, a typed :class:`~diagnose.core.Recommendation` out, no I/O. Every reason
cites the measurement and its value, and ``would_change_if`` says which
measurement would flip the decision.

The rules, in the order they are tried (see shared/REFERENCES.md):

1. a forgetting budget below ``SAFE_FORGETTING`` leaves only feature
   extraction: every other strategy moves the backbone, and how far it then
   forgets can only be measured (``diagnose compare``);
2. a small target (< ``SMALL_PER_CLASS`` images per class) without an
   input-level shift gets a new head on frozen features;
3. an input-level shift (a large gap already at the first block) whose first
   block has *lost* the class information it carries on the source (target
   probe well below the source probe there) needs the early filters to adapt:
   every block fine-tunes, with discriminative LRs (Lee et al. 2023, surgical
   fine-tuning; Yosinski et al. 2014; ULMFiT). Auto-RGN peaking at the first
   block supports it;
4. a large target (>= ``LARGE_PER_CLASS`` per class) without early information
   loss and without an output-level shift can afford full fine-tuning with
   discriminative LRs (ULMFiT);
5. otherwise the pretrained features keep what the target needs: LP-FT, a head
   fitted on the frozen features first, then everything at a low LR (Kumar et
   al. 2022). This covers input-level shifts whose early features still carry
   the classes (inverted contrast), output-level shifts (last-layer probe below
   an intermediate layer, where tuning from a random head distorts the
   features before the head is useful) and close targets.

The random-init control probe says whether pretraining helps at all: where it
does not, the confidence is low. The head LR comes from the LR range test; the
backbone trains ``BACKBONE_LR_RATIO`` (10x) below it and, with discriminative
LRs, each block further down is 2.6x lower (ULMFiT).

The thresholds were checked against measurements: benchmarks/bench_recommend.py
runs assess and every strategy on the four demo targets over several seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from diagnose.core import STRATEGY_NAMES, Evidence, LayerResult, Recommendation, check_params
from diagnose.decide.recipe import (
    DISCRIMINATIVE_FACTOR,
    OPTIMIZER,
    TRAIN_DEFAULTS,
    group_lrs,
    recommended_epochs,
)

__all__ = [
    "BENEFIT_MIN",
    "DEFAULT_HEAD_LR",
    "EARLY_LOSS",
    "GAP_SIGNIFICANCE",
    "INPUT_GAP_PAD",
    "LARGE_PER_CLASS",
    "PROBE_DROP",
    "RGN_QUIET",
    "SAFE_FORGETTING",
    "SMALL_PER_CLASS",
    "STRATEGIES",
    "recommend",
]

STRATEGIES = STRATEGY_NAMES

DEFAULT_HEAD_LR = 1e-2
INPUT_GAP_PAD = 1.0  # PAD above this at the first block: the inputs themselves differ
EARLY_LOSS = 0.10  # first-block probe this far below the source's: early features lost the classes
PROBE_DROP = 0.05  # last-layer probe this far below the best layer: late features do not fit
BENEFIT_MIN = 0.02  # pretrained probe must beat the control by this much to count
# Labelled images per class below which a target counts as small, and above which as
# large: with 30 a 10-class val split holds ~30 images, about +-10 points of resolution.
SMALL_PER_CLASS = 30
LARGE_PER_CLASS = 500
SAFE_FORGETTING = 0.05  # budgets below this admit no strategy that moves the backbone
# A block whose relative gradient norm (Auto-RGN, normalised to the largest) is below this
# barely moves once the backbone trains; the prior reports it, the race decides.
RGN_QUIET = 0.25
# The first block's MMD gap counts as real below this permutation p-value (the usual 5%
# test level; the permutation test has 200 permutations by default, resolution 0.005).
GAP_SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class _Signals:
    """Every measurement a rule reads (and nothing else): the probed block names, the
    best target probe's index and accuracy, the last and first blocks' target probes,
    the first block's source probe (same task only), the best-to-last drop, the best
    control probe and the pretrained benefit over it, the first block's PAD and MMD
    p-value, and Auto-RGN per block."""

    names: list[str]
    best_i: int
    best: float
    last: float
    first: float
    source_first: float | None
    drop: float
    best_control: float | None
    benefit: float | None
    pad0: float | None
    p0: float | None
    rgn: dict[str, float]


@dataclass(frozen=True)
class _Context:
    """What the rules read besides the signals: labelled images per class, the forgetting
    budget, the first block's gap in words, the early features' loss, an input shift."""

    n: float
    budget: float | None
    gap: str
    loss: float | None
    shift: bool


@dataclass(frozen=True)
class _Verdict:
    """A rule's outcome; ``rgn_said``: its reasons cite Auto-RGN already."""

    strategy: str
    unfreeze: list[str]
    confidence: str
    reasons: list[str]
    would_change: list[str]
    rgn_said: bool = False


def _signals(ev: Evidence, layers: list[LayerResult]) -> _Signals:
    """Every measurement a rule reads, from the evidence's layers with a target probe."""
    names = [layer.name for layer in layers]
    target = [layer.accuracy("target") for layer in layers]
    control = [c for c in (layer.accuracy("control") for layer in layers) if c is not None]
    best_i = max(range(len(layers)), key=lambda i: target[i])
    src_classes, tgt_classes = ev.source_classes, ev.target_classes
    source0 = layers[0].accuracy("source")
    same_task = bool(src_classes) and src_classes == tgt_classes and source0 is not None
    rgn = {layer.name: layer.rgn for layer in layers if layer.rgn is not None}
    return _Signals(
        names=names,
        best_i=best_i,
        best=target[best_i],
        last=target[-1],
        first=target[0],
        source_first=source0 if same_task else None,
        drop=target[best_i] - target[-1],
        best_control=max(control) if control else None,
        benefit=target[best_i] - max(control) if control else None,
        pad0=layers[0].gap_value("pad"),
        p0=layers[0].gap_value("mmd_pvalue"),
        rgn=rgn,
    )


def _input_shift(s: _Signals) -> bool:
    return s.pad0 is not None and s.pad0 >= INPUT_GAP_PAD and (s.p0 or 0.0) < GAP_SIGNIFICANCE


def _early_loss(s: _Signals) -> float | None:
    return None if s.source_first is None else s.source_first - s.first


def _decide(s: _Signals, n_per_class: float, max_forgetting: float | None) -> _Verdict:
    """The :class:`_Verdict` of the first rule that applies, in the order of
    :data:`_RULES`, else LP-FT's."""
    first = s.names[0]
    gap_txt = (
        f"PAD at {first} is {s.pad0:.2f}" + (f" (MMD p={s.p0:.3g})" if s.p0 is not None else "")
        if s.pad0 is not None
        else f"no gap was measured at {first}"
    )
    ctx = _Context(n_per_class, max_forgetting, gap_txt, _early_loss(s), _input_shift(s))
    for rule in _RULES:
        out = rule(s, ctx)
        if out is not None:
            return out
    return _lp_ft(s, ctx)


def _tight_budget(s: _Signals, ctx: _Context) -> _Verdict | None:
    budget = ctx.budget
    if budget is None or budget >= SAFE_FORGETTING:
        return None
    return _Verdict(
        "feature_extraction",
        [],
        "high",
        [
            f"The forgetting budget is {budget:.3f} of source accuracy: only a frozen "
            "backbone is sure to stay within it (every other strategy moves the pretrained "
            "weights, by an amount only diagnose compare can measure)."
        ],
        [f"A forgetting budget of {SAFE_FORGETTING:.2f} or more (--max-forgetting)."],
    )


def _small_target(s: _Signals, ctx: _Context) -> _Verdict | None:
    n, first = ctx.n, s.names[0]
    if not (n and n < SMALL_PER_CLASS and not ctx.shift):
        return None
    return _Verdict(
        "feature_extraction",
        [],
        "high" if s.drop < PROBE_DROP else "medium",
        [
            f"The target has {n:.0f} training images per class and no input-level "
            f"shift ({ctx.gap}): a new head on frozen features is the least likely to "
            f"overfit; its last-layer probe reaches {s.last:.3f}."
        ],
        [
            f"{SMALL_PER_CLASS} or more training images per class, which would afford tuning "
            "the backbone after the head (LP-FT).",
            f"PAD at {first} of {INPUT_GAP_PAD:.1f} or more (an input-level shift).",
        ],
    )


def _destroyed_early_features(s: _Signals, ctx: _Context) -> _Verdict | None:
    names, first, loss = s.names, s.names[0], ctx.loss
    if not (ctx.shift and loss is not None and loss >= EARLY_LOSS):
        return None
    rgn_top = max(s.rgn, key=s.rgn.get) if s.rgn else None
    reasons = [
        f"An input-level shift ({ctx.gap}) that destroys what the early features carry: the "
        f"target probe at {first} is {s.first:.3f} against {s.source_first:.3f} on the "
        f"source ({loss:.3f} lost). Every block is unfrozen so the early filters can adapt "
        "(Lee et al. 2023: input-level shifts want the early blocks), with LRs falling by "
        f"{DISCRIMINATIVE_FACTOR} per block going down from the head (ULMFiT): the head and "
        "late blocks, which re-map the shifted features, move most."
    ]
    if rgn_top is not None:
        reasons.append(
            f"Auto-RGN {'agrees' if rgn_top == first else 'disagrees'}: the largest relative "
            f"gradient norm is at {rgn_top}."
        )
    # On the demo's noise target the full fine-tuning variants and feature extraction
    # land within about 1.5 points of each other from seed to seed: never "high".
    return _Verdict(
        "discriminative",
        list(names),
        "medium" if rgn_top in (None, first) else "low",
        reasons,
        [
            f"The target probe at {first} within {EARLY_LOSS:.2f} of the source's "
            f"(now {loss:.3f} below): then LP-FT, which keeps the early features, would do.",
            f"PAD at {first} below {INPUT_GAP_PAD:.1f}: no input-level shift.",
        ],
        rgn_said=rgn_top is not None,  # the caller adds no second Auto-RGN reason
    )


def _large_target(s: _Signals, ctx: _Context) -> _Verdict | None:
    n = ctx.n
    if not (n >= LARGE_PER_CLASS and s.drop < PROBE_DROP):
        return None
    return _Verdict(
        "discriminative",
        list(s.names),
        "medium",
        [
            f"The target has {n:.0f} images per class, enough to fine-tune every "
            f"block, with LRs falling by {DISCRIMINATIVE_FACTOR} per block going down so the "
            f"general early features move least (ULMFiT); the last-layer probe ({s.last:.3f}) "
            f"is within {s.drop:.3f} of the best layer."
        ],
        [f"Fewer than {LARGE_PER_CLASS} images per class: then LP-FT, head first."],
    )


_RULES = (_tight_budget, _small_target, _destroyed_early_features, _large_target)


def _lp_ft(s: _Signals, ctx: _Context) -> _Verdict:
    """LP-FT: the features keep what the target needs; fit the head first, then tune."""
    names, first, shift = s.names, s.names[0], ctx.shift
    if shift:
        why = (
            f"An input-level shift ({ctx.gap}), but the early features still carry the "
            f"classes: the target probe at {first} is {s.first:.3f} against "
            f"{s.source_first:.3f} on the source."
            if ctx.loss is not None
            else f"An input-level shift ({ctx.gap}); without source labels on the same "
            "classes it cannot be told whether the early features lost the classes."
        )
        change = (
            f"The target probe at {first} falling {EARLY_LOSS:.2f} or more below the source's: "
            "then the early filters must be re-learnt (full fine-tuning)."
        )
    elif s.drop >= PROBE_DROP and s.best_i < len(names) - 1:
        why = (
            f"An output-level shift: the target probe peaks at {names[s.best_i]} "
            f"({s.best:.3f}) and falls to {s.last:.3f} at the last block. Tuning the later "
            "blocks from a random head distorts them before the head is useful; fitting the "
            "head first keeps the intermediate information while the blocks adapt."
        )
        change = (
            f"The last-layer probe within {PROBE_DROP:.2f} of the best layer: a close target, "
            "same strategy, higher confidence."
        )
    else:
        why = (
            f"A close target ({ctx.gap}; the last-layer probe {s.last:.3f} is within "
            f"{s.drop:.3f} of the best layer) with {ctx.n:.0f} training images per class."
        )
        change = (
            f"Fewer than {SMALL_PER_CLASS} images per class (feature extraction) or "
            f"{LARGE_PER_CLASS} or more (discriminative full fine-tuning)."
        )
    return _Verdict(
        "lp_ft",
        list(names),
        "medium" if shift or s.drop >= PROBE_DROP else "high",
        [
            why,
            "LP-FT fits the head on the frozen features, then fine-tunes every block at a low LR: "
            "it starts from the probe's accuracy and, unlike fine-tuning from a random head, does "
            "not distort the pretrained features first (Kumar et al. 2022).",
        ],
        [change],
    )


def recommend(
    results: Mapping | Evidence, *, max_forgetting: float | None = None
) -> Recommendation:
    """Recommend a strategy, blocks to unfreeze and LRs from an assessment's results
    (its results dict, or the typed :class:`~diagnose.core.Evidence` ``assess`` builds).

    ``max_forgetting`` is the user's forgetting budget (a fraction of source
    accuracy, as ``diagnose compare --max-forgetting``): a tight one leaves
    only strategies that keep the backbone frozen. Example::

        rec = recommend(assess_result.to_dict())
        rec.strategy, rec.lr["head"], rec.reasons[0]

    Returns the rule prior as a :class:`~diagnose.core.Recommendation`, ``measured``
    False (no race chose it).
    """
    check_params("recommend", max_forgetting=max_forgetting)
    ev = Evidence.of(results)
    every = list(ev.layers)
    layers = [layer for layer in every if layer.accuracy("target") is not None]
    names = [layer.name for layer in every]
    head_lr = ev.suggested_lr
    reasons = [
        f"The LR range test gave no suggestion, so the head LR falls back to {DEFAULT_HEAD_LR:g}."
        if head_lr is None
        else f"The LR range test's steepest stable descent is at {head_lr:.3g}: the head LR."
    ]
    head_lr = DEFAULT_HEAD_LR if head_lr is None else head_lr
    n_per_class = ev.per_class
    if not layers:
        reasons.append("No target probe could be measured, so nothing supports freezing any block.")
        strategy, unfreeze, confidence = "full_low_lr", names, "low"
        would_change = ["Labelled target data let the layer-wise probes run."]
    else:
        s = _signals(ev, layers)
        v = _decide(s, n_per_class, max_forgetting)
        strategy, unfreeze, confidence = v.strategy, v.unfreeze, v.confidence
        would_change = list(v.would_change)
        reasons += v.reasons + _benefit_reasons(s, would_change)
        reasons += [] if v.rgn_said else _rgn_reasons(s)
        if s.benefit is not None and s.benefit < BENEFIT_MIN:
            confidence = "low"
        names = s.names
    return Recommendation(
        measured=False,
        strategy=strategy,
        unfreeze=tuple(unfreeze),
        lr=group_lrs(strategy, names, unfreeze, head_lr),
        epochs=recommended_epochs(n_per_class, strategy),
        weight_decay=TRAIN_DEFAULTS.weight_decay,
        optimizer=OPTIMIZER,
        confidence=confidence,
        max_forgetting=max_forgetting,
        reasons=tuple(reasons),
        would_change_if=tuple(would_change),
    )


def _benefit_reasons(s: _Signals, would_change: list[str]) -> list[str]:
    """What the pretrained probe buys over the random-init control, in words."""
    benefit = s.benefit
    if benefit is None:
        return []
    if benefit >= BENEFIT_MIN:
        return [
            f"Pretraining helps: the best pretrained probe ({s.best:.3f}) beats the random-init "
            f"control ({s.best_control:.3f}) by {benefit:.3f}."
        ]
    versus = (
        f"is {-benefit:.3f} below the random-init control's ({s.best_control:.3f}): the "
        "control is better"
        if benefit < 0
        else f"is only {benefit:.3f} above the random-init control's ({s.best_control:.3f})"
    )
    would_change.append(
        f"The best pretrained probe beating the control by more than {BENEFIT_MIN:.2f}."
    )
    return [
        f"The pretrained probe's best accuracy ({s.best:.3f}) {versus}; frozen pretrained "
        "features buy little on this target, so the confidence is low; diagnose compare "
        "measures whether the pretrained weights still help as a starting point (against "
        "scratch)."
    ]


def _rgn_reasons(s: _Signals) -> list[str]:
    """Where Auto-RGN is largest and where it is quiet (the caller leaves it out when the
    deciding rule cited Auto-RGN: its verdict's ``rgn_said``)."""
    if not s.rgn:
        return []
    top = max(s.rgn, key=s.rgn.get)
    quiet = [n for n, v in s.rgn.items() if v < RGN_QUIET]
    return [
        f"Relative gradient norms (Auto-RGN) are largest at {top}"
        + (f" and below {RGN_QUIET} at {', '.join(quiet)}" if quiet else "")
        + ": where the target's gradient pulls hardest once the backbone trains."
    ]
