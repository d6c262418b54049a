"""The race's budget, kept before it is spent: a cost model and the cuts that fit the race to it.

The race may spend ``budget`` x the full sweep's FLOPs (every candidate at the
full epochs on every scoring fold). Its first rung used to run at full width
whatever that cost, so on a 24-image target (one optimiser step per epoch, a
single rung of 50 epochs) the "race" was a sweep of every candidate on a third
of the folds. Here the race is sized *before* it trains:

- :class:`CostModel` prices a trial from one counted forward pass of the model
  (FLOPs per image before each block, by ``FlopCounterMode``): a trained
  suffix costs three forward passes per training image and epoch (forward,
  input and weight gradients), a frozen prefix one forward pass per image,
  once (the engine caches it), and a head on cached features next to nothing.
- :func:`plan_race` drops head LRs that cannot train a head at all, then,
  while the first rung would take more than :data:`FIRST_RUNG_SHARE` of the
  budget, cuts in this order: fewer folds in the first rung, a shorter first
  rung (never under the engine's step floor), one LR per strategy and depth
  (the rule prior's least likely first), then whole strategies and depths from
  the tail of the prior's order. Every cut is a :class:`Cut`, written to
  results.json and shown in the report.

The estimate is checked against what the race measures: :func:`calibration`
scales the model to the FLOPs the first trials actually counted, and the race
stops adding trials once the calibrated cost would pass the budget.

Example:
    >>> cost = CostModel.measure(net, blocks, x[:1], head_in=512)
    >>> plan = plan_race(cands, cost, blocks=blocks, n_train=16, n_val=8, classes=3,
    ...                  n_folds=6, first_folds=2, epochs=[50], min_epochs=20, budget=0.2)
    >>> [c.kind for c in plan.cuts], plan.epochs
    (['folds', 'first_rung'], [29, 50])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diagnose.decide.candidates import Candidate
from diagnose.decide.race_trials import shared_tag
from diagnose.training import FLOP_FORMULAS, TrainConfig

__all__ = [
    "FIRST_RUNG_SHARE",
    "HEAD_LR_RANGE",
    "TRAIN_PASSES",
    "CostModel",
    "Cut",
    "Ledger",
    "RacePlan",
    "TrialSizes",
    "calibration",
    "plan_race",
]

# The first rung may take this share of the budget: successive halving with ETA = 3
# spends about as much on each later rung as on the first, so half leaves room for
# at least one rung at the full epochs.
FIRST_RUNG_SHARE = 0.5
# Head LRs outside this range are never raced. Below it a new head trained by SGD
# for a few dozen cosine-decayed steps stays at its initialisation (on a real case a
# quarter of the race's FLOPs went to head LRs under 1e-4 that all stayed at chance);
# above it is past the end of the LR range test (10), where no loss was ever measured.
# (On a 24-image target the head's best LR was at or above 0.8: no lower cap is safe.)
HEAD_LR_RANGE = (1e-4, 10.0)
# A training step costs about three forward passes: the forward, the input gradients
# and the weight gradients (Kaplan et al. 2020).
TRAIN_PASSES = 3


@dataclass(frozen=True)
class CostModel:
    """Forward FLOPs per image of a model, in total and before each block starts.

    Attributes:
        total: forward FLOPs of one image through the whole model.
        before: block name -> forward FLOPs spent before that block starts.
        head_in: input features of the head the race trains (its cost is 2 x head_in x classes).
    """

    total: float
    before: dict[str, float]
    head_in: int

    @classmethod
    def measure(
        cls, model: nn.Module, blocks: list[str], example: torch.Tensor, head_in: int
    ) -> CostModel:
        """Count one forward pass of ``example`` (one image) through ``model`` in eval mode."""
        before: dict[str, float] = {}
        was_training = model.training
        with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:

            def mark(name: str):
                def hook(*_) -> None:  # returns None: the block's input is left as it is
                    before.setdefault(name, counter.get_total_flops())

                return hook

            handles = [model.get_submodule(b).register_forward_pre_hook(mark(b)) for b in blocks]
            try:
                model.eval()
                with torch.no_grad():
                    model(example[:1])
            finally:
                for h in handles:
                    h.remove()
                model.train(was_training)
        total = float(counter.get_total_flops())
        return cls(total, {b: float(before.get(b, 0.0)) for b in blocks}, int(head_in))

    def trial(
        self, cand: Candidate, blocks: list[str], n_train: int, n_val: int, classes: int
    ) -> tuple[tuple, float, float]:
        """``(shared_key, fixed, per_epoch)`` FLOPs of ``cand`` on one fold.

        ``fixed`` is what does not grow with the epochs (a capture or a frozen prefix
        cached once, shared by every candidate with the same ``shared_key``, and the
        head's own epochs on cached features); ``per_epoch`` what one epoch of the
        main stage costs.
        """
        head = TRAIN_PASSES * 2.0 * self.head_in * classes * n_train
        head_epochs = TrainConfig().lp_epochs
        images = n_train + n_val
        if cand.strategy == "feature_extraction":
            return ("capture",), self.total * images, head * head_epochs
        if cand.strategy == "partial":
            cut = self.before[blocks[-cand.depth]]
            return (
                ("prefix", cand.depth),
                cut * images,
                TRAIN_PASSES * (self.total - cut) * n_train,
            )
        per_epoch = TRAIN_PASSES * self.total * n_train
        if cand.strategy == "lp_ft":
            return ("capture",), self.total * images + head * head_epochs, per_epoch
        return (), 0.0, per_epoch


@dataclass(frozen=True)
class Cut:
    """One thing the race did not do to keep its budget, and why.

    Attributes:
        kind: ``"lr_range"``, ``"folds"``, ``"first_rung"``, ``"lr_grid"``, ``"candidates"``
            or ``"edge"`` (an LR grid not extended past its edge).
        before: the first rung's candidates (folds, epochs) before the cut.
        after: after it.
        why: one sentence for the report.
        dropped: the candidates (keys) or arms it removed, if any.
    """

    kind: str
    before: float
    after: float
    why: str
    dropped: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Plain JSON fields."""
        return {
            "kind": self.kind,
            "before": self.before,
            "after": self.after,
            "why": self.why,
            "dropped": list(self.dropped),
        }


@dataclass(frozen=True)
class TrialSizes:
    """A cost model with the sizes of one race's folds: what its sweeps cost, a priori."""

    cost: CostModel
    blocks: list[str]
    n_train: int
    n_val: int
    classes: int

    def shared(self, cand: Candidate) -> tuple[tuple[str, object], float] | None:
        """``((phase, tag), FLOPs)`` of the result ``cand`` shares with others per fold (the
        keys of :meth:`diagnose.decide.race_trials.RaceContext.record`), or None."""
        images = self.n_train + self.n_val
        if cand.strategy == "partial":
            phase, flops = "prefix_cache", self.cost.before[self.blocks[-cand.depth]] * images
        elif cand.strategy in ("feature_extraction", "lp_ft"):
            phase, flops = "capture", self.cost.total * images
        else:
            return None
        return (phase, shared_tag(cand, phase)), flops

    def sweep(self, cands: list[Candidate], epochs: int, folds: int) -> float:
        """FLOPs of ``cands`` at ``epochs`` on ``folds`` folds, shared fixed costs once."""
        shared: dict[tuple, float] = {}
        scaled = 0.0
        for c in cands:
            key, fixed, per_epoch = self.cost.trial(
                c, self.blocks, self.n_train, self.n_val, self.classes
            )
            shared[key or (c.key,)] = max(shared.get(key or (c.key,), 0.0), fixed)
            scaled += per_epoch * epochs
        return folds * (sum(shared.values()) + scaled)


@dataclass
class RacePlan:
    """What the race will run: its candidates, rung-0 folds and rung epochs, and the cuts.

    ``full_estimate`` is the a-priori FLOPs of the full sweep (the candidates left after
    the LR range, at the full epochs on every fold) and ``first_rung_estimate`` of the
    first rung as planned.
    """

    candidates: list[Candidate]
    first_folds: int
    epochs: list[int]
    full_estimate: float
    first_rung_estimate: float
    sizes: TrialSizes
    cuts: list[Cut] = field(default_factory=list)


def _in_lr_range(cands: list[Candidate], cuts: list[Cut]) -> list[Candidate]:
    lo, hi = HEAD_LR_RANGE
    kept = [c for c in cands if lo <= c.head_lr <= hi]
    if len(kept) < len(cands) and kept:
        cuts.append(
            Cut(
                "lr_range",
                len(cands),
                len(kept),
                f"head LRs outside [{lo:g}, {hi:g}] cannot train a new head with SGD: "
                "the range test's suggestion was far off, so only the usual LRs were raced",
                tuple(c.key for c in cands if c not in kept),
            )
        )
        return kept
    return cands


def _one_lr_per_arm(cands: list[Candidate], arm: str) -> list[Candidate]:
    """``cands`` with ``arm`` reduced to the middle LR of its grid."""
    lrs = sorted(c.head_lr for c in cands if c.arm == arm)
    mid = lrs[(len(lrs) - 1) // 2]
    return [c for c in cands if c.arm != arm or c.head_lr == mid]


def plan_race(
    candidates: list[Candidate],
    cost: CostModel,
    *,
    blocks: list[str],
    n_train: int,
    n_val: int,
    classes: int,
    n_folds: int,
    first_folds: int,
    epochs: list[int],
    min_epochs: int,
    budget: float,
    spent: float = 0.0,
) -> RacePlan:
    """The race's candidates, first-rung folds and rung epochs, cut to fit ``budget``.

    Args:
        candidates: the candidates in the rule prior's order.
        cost: the model's :class:`CostModel`.
        blocks: the probed blocks in forward order.
        n_train, n_val: training and held-out images of one fold.
        classes: target classes.
        n_folds: scoring folds; ``first_folds`` of them score the first rung.
        epochs: the rung schedule (:func:`diagnose.decide.race.rung_epochs`).
        min_epochs: the shortest rung the engine's step floor allows.
        budget: the fraction of the full sweep the race may spend.
        spent: FLOPs already spent from that budget (the network's LR range test).
    """
    cuts: list[Cut] = []
    cands = _in_lr_range(list(candidates), cuts)
    sizes = TrialSizes(cost, list(blocks), int(n_train), int(n_val), int(classes))
    full = sizes.sweep(cands, epochs[-1], n_folds)
    allowance = FIRST_RUNG_SHARE * max(0.0, budget * full - spent)

    def fits(c: list[Candidate], e: int, f: int) -> bool:
        return sizes.sweep(c, e, f) <= allowance

    folds = _cut_folds(cands, epochs[0], int(first_folds), fits, cuts)
    epochs = _cut_first_rung(cands, list(epochs), folds, min_epochs, fits, cuts)
    cands = _cut_lrs(cands, lambda c: fits(c, epochs[0], folds), cuts)
    cands = _cut_arms(cands, lambda c: fits(c, epochs[0], folds), cuts)
    return RacePlan(cands, folds, epochs, full, sizes.sweep(cands, epochs[0], folds), sizes, cuts)


def _cut_folds(cands, epochs: int, folds: int, fits, cuts: list[Cut]) -> int:
    """The most first-rung folds (down to 1) that fit."""
    if fits(cands, epochs, folds) or folds <= 1:
        return folds
    fewest = next((f for f in range(folds - 1, 1, -1) if fits(cands, epochs, f)), 1)
    cuts.append(Cut("folds", folds, fewest, "the first rung scores on fewer folds"))
    return fewest


def _cut_first_rung(cands, epochs: list[int], folds: int, min_epochs: int, fits, cuts) -> list:
    """The rung epochs with the longest first rung (down to ``min_epochs``) that fits."""
    if fits(cands, epochs[0], folds) or epochs[0] <= min_epochs:
        return epochs
    short = next(
        (e for e in range(epochs[0] - 1, min_epochs, -1) if fits(cands, e, folds)), min_epochs
    )
    floor = (
        "the engine's floor" if short == min_epochs else f"above the engine's floor of {min_epochs}"
    )
    why = f"the first rung trains {short} epochs, {floor}"
    cuts.append(Cut("first_rung", epochs[0], short, why))
    # A single rung at the full epochs becomes two; otherwise the first is shortened.
    return [short, *epochs[1:]] if len(epochs) > 1 else [short, epochs[0]]


def _cut_lrs(cands: list[Candidate], fits, cuts: list[Cut]) -> list[Candidate]:
    """One LR (the grid's middle) for the prior's least likely arms, until the rung fits."""
    trimmed, n_before = [], len(cands)
    for arm in reversed(list(dict.fromkeys(c.arm for c in cands))):
        if fits(cands):
            break
        if sum(c.arm == arm for c in cands) > 1:
            cands = _one_lr_per_arm(cands, arm)
            trimmed.append(arm)
    if trimmed:
        every = len(trimmed) == len({c.arm for c in cands})
        why = "only the middle LR of the grid was raced for " + (
            "every strategy and depth"
            if every
            else "the rule prior's least likely strategies and depths"
        )
        cuts.append(Cut("lr_grid", n_before, len(cands), why, tuple(trimmed)))
    return cands


def _cut_arms(cands: list[Candidate], fits, cuts: list[Cut]) -> list[Candidate]:
    """The prior's least likely arms dropped (never the last one) until the rung fits."""
    dropped, n_before = [], len(cands)
    while not fits(cands) and len({c.arm for c in cands}) > 1:
        last = cands[-1].arm
        cands = [c for c in cands if c.arm != last]
        dropped.append(last)
    if dropped:
        why = "the rule prior's least likely strategies and depths were not raced"
        cuts.append(Cut("candidates", n_before, len(cands), why, tuple(dropped)))
    return cands


@dataclass
class Ledger:
    """The race's spend against its budget, in measured FLOPs.

    The full sweep's FLOPs are the cost model's estimate scaled by what the first
    rung's trials measured against what the model said they would cost.
    """

    plan: RacePlan
    budget: float
    spent: float = 0.0
    first_measured: float = 0.0
    first_ran: list[Candidate] = field(default_factory=list)

    def ratio(self, epochs: int, folds: int) -> float:
        estimated = self.plan.sizes.sweep(self.first_ran, epochs, folds)
        return calibration(self.first_measured, estimated)

    def full(self, epochs: int, folds: int) -> float:
        return self.plan.full_estimate * self.ratio(epochs, folds)

    def fits_first(self, cand: Candidate, epochs: int, folds: int, reserve: float = 0.0) -> bool:
        """Whether one more first-rung trial of ``cand`` keeps the spend within the budget,
        with ``reserve`` FLOPs (measured units) kept for the rungs after it."""
        ratio = self.ratio(epochs, folds)
        extra = self.plan.sizes.sweep([*self.first_ran, cand], epochs, folds) - (
            self.plan.sizes.sweep(self.first_ran, epochs, folds)
        )
        budget = self.budget * self.plan.full_estimate * ratio
        return self.spent + extra * ratio + reserve <= budget

    def record_first(self, cand: Candidate, flops: float) -> None:
        self.first_ran.append(cand)
        self.first_measured += flops
        self.spent += flops


def calibration(measured: float, estimated: float) -> float:
    """Measured over estimated FLOPs of the trials run so far (1.0 before any)."""
    return measured / estimated if estimated > 0 and measured > 0 else 1.0
