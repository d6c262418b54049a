"""The candidate adaptations a trial race tries, placed and ordered by the assessment.

The rules of :mod:`diagnose.recommend` no longer decide: they are the prior
that orders the candidates (the prior's pick first) and prunes them (a tight
forgetting budget admits only a frozen backbone). The measurements place the
depths of partial fine-tuning: besides the last block, the last two and about
half the network, a cut just after the block where the target probe peaks
(later blocks are task-specific, Yosinski et al. 2014) and a cut just below
the lowest block whose relative gradient norm is high (Auto-RGN, Lee et al.
2023). Each candidate gets a small grid of head LRs around the LR range
test's suggestion; the race, not a fixed ratio, picks one.

Example:
    >>> cands = build_candidates(assessment, prior=recommend(assessment))
    >>> [c.key for c in cands][:3]
    ['lp_ft lr=0.00333', 'lp_ft lr=0.01', 'lp_ft lr=0.03']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from diagnose.core import Evidence, LayerResult, Recommendation
from diagnose.decide.rules import DEFAULT_HEAD_LR
from diagnose.training import TrainConfig

__all__ = [
    "Candidate",
    "LORA_RANKS",
    "LR_GRID",
    "PEAK_TOLERANCE",
    "RACE_STRATEGIES",
    "RGN_HIGH",
    "USUAL_LR_BAND",
    "build_candidates",
    "lr_grid",
    "partial_depths",
]

# The strategies a race can recommend. gradual_unfreeze and l2_sp are variants
# of full fine-tuning that compare measures; scratch is a baseline, never advice.
# The parameter-efficient ones come last: the rule prior never names them, so they are
# the first a tight budget cuts.
RACE_STRATEGIES = (
    "feature_extraction",
    "partial",
    "full_low_lr",
    "discriminative",
    "lp_ft",
    "bitfit",
    "lora",
)
# LoRA's ranks in the race: a small and a large update (Hu et al. 2022 found small ranks
# already competitive on their tasks), each with alpha = 2 x rank, the same scale
# alpha / rank = 2 as compare's default.
LORA_RANKS = (4, 16)
# Multipliers of the LR range test's suggestion: a factor of 3 either side covers
# the range test's typical error (its suggestion is a steepest-descent point, and
# the best fixed LR for a whole run sits within about half a decade of it).
LR_GRID = (1 / 3, 1.0, 3.0)
# A block counts as "high" Auto-RGN when its relative gradient norm is at least
# this fraction of the largest: the blocks the target's gradient pulls on.
RGN_HIGH = 0.5
# Probe accuracies within this of the peak are "at the peak" when placing the bend
# (about one standard error of a probe on a few hundred target images).
PEAK_TOLERANCE = 0.01


@dataclass(frozen=True)
class Candidate:
    """One configuration of the race: a strategy, its depth (partial) and its head LR.

    Attributes:
        strategy: one of :data:`RACE_STRATEGIES`.
        depth: ``partial`` only: the number of probed blocks below the head that train.
        head_lr: the head's LR; backbone groups train at ``head_lr * 0.1``
            (discriminative: ``head_lr / 2.6**d``), as :func:`diagnose.training.strategies.plan` says.
        placed_by: what put this depth in the race (``"last block"``, ``"probe peak"``, ...).
        prior_rank: position of its strategy in the rule prior's order (0 = the prior's pick).
        lr_edge: its LR was added by the race beyond the edge of the grid, because that
            edge was the best LR of its strategy and depth after the first rung.
        lora_rank: ``lora`` only: the rank of its update (alpha is twice the rank).
    """

    strategy: str
    depth: int | None
    head_lr: float
    placed_by: str
    prior_rank: int
    lr_edge: bool = False
    lora_rank: int | None = None

    @property
    def lora_alpha(self) -> float | None:
        """LoRA's scale numerator: twice the rank (the update's scale alpha / r is 2)."""
        return None if self.lora_rank is None else 2.0 * self.lora_rank

    @property
    def arm(self) -> str:
        """Strategy and depth (or LoRA's rank) without the LR: ``"partial@2"``, ``"lora@r4"``,
        ``"lp_ft"``."""
        if self.lora_rank is not None:
            return f"{self.strategy}@r{self.lora_rank}"
        return self.strategy if self.depth is None else f"{self.strategy}@{self.depth}"

    @property
    def key(self) -> str:
        """A unique, readable name: ``"partial@2 lr=0.01"``."""
        return f"{self.arm} lr={self.head_lr:.3g}"

    def config(self, blocks: list[str], *, epochs: int, batch_size: int, seed: int) -> TrainConfig:
        """The engine's :class:`TrainConfig` for this candidate at ``epochs``."""
        unfreeze = None if self.depth is None else list(blocks[-self.depth :])
        r = self.lora_rank
        rank = {} if r is None else {"lora_rank": r, "lora_alpha": self.lora_alpha}
        return TrainConfig(
            epochs=int(epochs),
            batch_size=int(batch_size),
            head_lr=float(self.head_lr),
            unfreeze=unfreeze,
            seed=int(seed),
            **rank,
        )

    def to_dict(self) -> dict:
        """Plain-JSON fields, plus ``arm`` and ``key``."""
        return {**asdict(self), "arm": self.arm, "key": self.key}

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        """The candidate of a race entry (``to_dict()``'s output; extra keys are ignored)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def partial_depths(layers: list[LayerResult | dict]) -> dict[int, str]:
    """Depths (probed blocks that train) for ``partial``, each with what placed it.

    Always the last block, the last two and about half the network (when the
    network has that many blocks); then the measured cuts: just after the
    block where the target probe reaches its peak, and just below the lowest
    block with high Auto-RGN. A depth equal to every block is full fine-tuning,
    which the race runs as its own candidates, so it is left out.
    """
    layers = [x if isinstance(x, LayerResult) else LayerResult.from_dict(x) for x in layers]
    n = len(layers)
    depths: dict[int, str] = {}

    def add(depth: int, why: str) -> None:
        if 1 <= depth < n and depth not in depths:
            depths[depth] = why

    add(1, "last block")
    add(2, "last two blocks")
    add(max(1, math.ceil(n / 2)), "about half the network")
    accs = [layer.accuracy("target") for layer in layers]
    if all(a is not None for a in accs) and accs:
        peak = max(accs)
        first_at_peak = next(i for i, a in enumerate(accs) if a >= peak - PEAK_TOLERANCE)
        name = layers[first_at_peak].name
        add(n - 1 - first_at_peak, f"the target probe peaks at {name} ({accs[first_at_peak]:.3f})")
    rgn = [layer.rgn for layer in layers]
    if any(r is not None for r in rgn):
        top = max(r for r in rgn if r is not None)
        if top > 0:
            low = next(i for i, r in enumerate(rgn) if r is not None and r >= RGN_HIGH * top)
            add(n - low, f"Auto-RGN is high from {layers[low].name} up")
    return dict(sorted(depths.items()))


# A range-test suggestion outside this band is more than a decade from the usual head
# LRs of SGD (1e-2): on a real case (a ResNet-10 on sklearn digits) it suggested 2.7e-6,
# every candidate then stayed at its initialisation and the race could not tell them
# apart. Outside the band the grid also covers the usual LRs, so the race decides.
USUAL_LR_BAND = (1e-3, 1e-1)


def lr_grid(suggested: float) -> list[float]:
    """Head LRs for each candidate: :data:`LR_GRID` around ``suggested``, plus the same
    multipliers around :data:`DEFAULT_HEAD_LR` when ``suggested`` is outside
    :data:`USUAL_LR_BAND`. Three significant digits, ascending, no repeats."""
    centres = [suggested]
    if not USUAL_LR_BAND[0] <= suggested <= USUAL_LR_BAND[1]:
        centres.append(DEFAULT_HEAD_LR)
    return sorted({float(f"{c * m:.3g}") for c in centres for m in LR_GRID})


def _prior_order(prior_strategy: str | None) -> list[str]:
    order = list(RACE_STRATEGIES)
    if prior_strategy in order:
        order.remove(prior_strategy)
        order.insert(0, prior_strategy)
    return order


def build_candidates(
    assessment: Mapping | Evidence,
    prior: Recommendation,
    *,
    safe_forgetting: float,
    strategies: tuple[str, ...] = RACE_STRATEGIES,
) -> list[Candidate]:
    """The race's candidates, in the prior's order.

    Args:
        assessment: the assessment's :class:`~diagnose.core.Evidence` (layers with probes
            and Auto-RGN, the LR range test's suggestion), or its results dict.
        prior: the rule prior's recommendation (:func:`diagnose.decide.rules.recommend`);
            its strategy is tried first and breaks exact ties.
        safe_forgetting: a ``prior.max_forgetting`` below this keeps only
            feature extraction, the one candidate that cannot forget.
        strategies: the strategies to include (a subset of :data:`RACE_STRATEGIES`).
    """
    unknown = [s for s in strategies if s not in RACE_STRATEGIES]
    if unknown or not strategies:
        raise ValueError(
            f"The 'strategies' parameter must name some of {', '.join(RACE_STRATEGIES)}. "
            f"Got {list(strategies)!r} instead."
        )
    ev = Evidence.of(assessment)
    layers = [layer for layer in ev.layers if layer.name]
    suggested = ev.suggested_lr or DEFAULT_HEAD_LR
    budget = prior.max_forgetting
    allowed = (
        ["feature_extraction"] if budget is not None and budget < safe_forgetting else strategies
    )
    order = [s for s in _prior_order(prior.strategy) if s in allowed]
    depths = partial_depths(layers) if len(layers) >= 2 else {}
    out: list[Candidate] = []
    for rank, strategy in enumerate(order):
        for depth, lora_rank, why in _arms(strategy, depths):
            for lr in lr_grid(suggested):
                out.append(
                    Candidate(
                        strategy=strategy,
                        depth=depth,
                        head_lr=lr,
                        placed_by=why,
                        prior_rank=rank,
                        lora_rank=lora_rank,
                    )
                )
    return out


def _arms(strategy: str, depths: dict[int, str]) -> list[tuple[int | None, int | None, str]]:
    """``(depth, LoRA rank, what placed it)`` of each arm of ``strategy``."""
    if strategy == "partial":
        return [(d, None, why) for d, why in depths.items()]
    if strategy == "lora":
        return [(None, r, f"rank {r}") for r in LORA_RANKS]
    return [(None, None, "strategy")]
