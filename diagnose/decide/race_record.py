"""The race's record: typed from :func:`~diagnose.decide.race.run_race` to the recommendation.

The race's verdict is read by the recommendation (the pick, its words, its
learning-forgetting front) as these records, and becomes results.json's
``recommendation.trials`` only in :meth:`RaceRecord.to_dict`.

- :class:`PairedGap`: a paired difference between two candidates on the same
  held-out images, with its 95% interval.
- :class:`RungScore`: one candidate's score after one rung.
- :class:`RaceEntry`: one candidate across the race.
- :class:`RungLog`: one rung of the schedule: its epochs, candidates and FLOPs.
- :class:`RaceSpend`: what the race did and spent against its budget.
- :class:`ScoringProtocol`: how the candidates were scored (the folds).
- :class:`RaceRecord`: all of it, with the verdict (winner, leaders, ties, pick).

Example:
    >>> record = run_race(cands, folds, x, y, 10, model=net, head="fc", blocks=blocks,
    ...                   full_epochs=15, budget=0.2, batch_size=64, seed=0,
    ...                   device=torch.device("cpu"))
    >>> record.entry(record.pick).rungs[-1].val_accuracy, record.spent_fraction
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from diagnose.decide.candidates import Candidate

if TYPE_CHECKING:  # the trials record rungs (RungScore) and the budget imports the trials
    from diagnose.decide.race_budget import Cut
    from diagnose.decide.race_lr import LRGrids

__all__ = [
    "PairedGap",
    "RaceEntry",
    "RaceRecord",
    "RaceSpend",
    "RungLog",
    "RungScore",
    "ScoringProtocol",
]


@dataclass(frozen=True)
class PairedGap:
    """Mean per-image difference of one candidate over another, paired on ``n_images``."""

    mean: float
    ci_low: float
    ci_high: float
    n_images: int

    def to_dict(self) -> dict:
        """Plain JSON fields."""
        return asdict(self)


@dataclass(frozen=True)
class ScoringProtocol:
    """How the race's candidates were scored.

    Attributes:
        kind: ``"val split"`` or ``"repeated stratified k-fold over train+val"``.
        folds: folds per partition; repeats: partitions.
        n_images: labelled images in the pool; n_held_out: images scored at least once.
        note: why k-fold was not possible, or which images it never scores.
    """

    kind: str
    folds: int
    repeats: int
    n_images: int
    n_held_out: int
    note: str | None = None

    def to_dict(self) -> dict:
        """Plain JSON fields (``note`` only when there is one)."""
        out = asdict(self)
        if self.note is None:
            del out["note"]
        return out


@dataclass(frozen=True)
class RungScore:
    """One candidate after one rung: its held-out score, what it cost, what it forgot.

    ``agreement`` and ``source_accuracy`` are measured at the full epochs only, when the
    race had source images (``forgetting_measured``); ``source_accuracy`` is None when
    the source images are unlabelled. ``loss_rose_folds`` counts the folds whose mean
    training loss was higher in the last fine-tuning epoch than in the first: the LR was
    too high for that many epochs.
    """

    rung: int
    epochs: int
    val_accuracy: float
    val_loss: float | None
    fold_accuracy: tuple[float, ...]
    folds: int
    flops: int
    wall_s: float
    loss_rose_folds: int = 0
    forgetting_measured: bool = False
    agreement: float | None = None
    source_accuracy: float | None = None

    def to_dict(self) -> dict:
        """Plain JSON fields (the forgetting keys only where the rung measured them)."""
        out = asdict(self)
        out["fold_accuracy"] = list(self.fold_accuracy)
        if not out.pop("forgetting_measured"):
            del out["agreement"], out["source_accuracy"]
        return out


@dataclass(frozen=True)
class RaceEntry:
    """One candidate across the race.

    Attributes:
        candidate: what was trained (strategy, depth or rank, LR).
        rungs: its score after each rung it ran.
        flops, wall_s: what its trials spent, in all.
        full_run_flops_estimate: its cost at the full epochs on every fold (None: never ran).
        status: ``"ok"``, ``"diverged"`` or ``"failed"``.
        eliminated_at: the rung after which it stopped (None: it reached the end).
        reason: why it stopped, in words.
        gap_to_winner, loss_gap_to_winner: a finalist's paired accuracy gap to the winner
            and its held-out cross-entropy gap (positive: worse than the winner).
    """

    candidate: Candidate
    rungs: tuple[RungScore, ...]
    flops: int
    wall_s: float
    full_run_flops_estimate: float | None
    status: str
    eliminated_at: int | None
    reason: str | None
    gap_to_winner: PairedGap | None = None
    loss_gap_to_winner: PairedGap | None = None

    @property
    def key(self) -> str:
        """The candidate's key, as the race names it (``"partial@2 lr=0.03"``)."""
        return self.candidate.key

    def to_dict(self) -> dict:
        """Plain JSON fields: the candidate's, then its record in the race."""
        return {
            **self.candidate.to_dict(),
            "rungs": [r.to_dict() for r in self.rungs],
            "flops": self.flops,
            "wall_s": self.wall_s,
            "full_run_flops_estimate": self.full_run_flops_estimate,
            "status": self.status,
            "eliminated_at": self.eliminated_at,
            "reason": self.reason,
            "gap_to_winner": _dict_or_none(self.gap_to_winner),
            "loss_gap_to_winner": _dict_or_none(self.loss_gap_to_winner),
        }


@dataclass(frozen=True)
class RungLog:
    """One rung of the race: its epochs, how many candidates ran it, and their FLOPs."""

    rung: int
    epochs: int
    candidates: int
    flops: float

    def to_dict(self) -> dict:
        """Plain JSON fields."""
        return asdict(self)


@dataclass(frozen=True)
class RaceSpend:
    """What the race ran and spent against its budget.

    Attributes:
        rungs: each rung of the schedule (:class:`RungLog`).
        rung_epochs: the epochs of each rung; eta: successive halving's factor.
        flops_spent: training FLOPs of the race, its LR range test included.
        full_flops_estimate: the full sweep's FLOPs (calibrated on the trials that ran);
            full_flops_prior_estimate: the cost model's, before any trial ran.
        budget: the share of ``full_flops_estimate`` the race may spend.
        cuts: what was not done to keep the budget, and why.
        lr_grids: the LR grids raced and where they came from.
        memory_format: the trials' memory layout and why (its ``to_dict``).
        unbracketed: arms whose best LR is still on the edge of what they tried.
        unstable: arms whose every LR at the last rung had its training loss rise over
            the run on most folds (:func:`unstable_arms`): not measured at a stable LR.
        executor: ``"local"`` or ``"ray"``; flops_discarded: Ray trials refused by the budget.
        wall_s: seconds the race took.
    """

    eta: int
    rungs: tuple[RungLog, ...] = ()
    rung_epochs: tuple[int, ...] = ()
    flops_spent: int = 0
    full_flops_estimate: float = 0.0
    full_flops_prior_estimate: float = 0.0
    budget: float = 0.0
    cuts: tuple[Cut, ...] = ()
    lr_grids: LRGrids | None = None
    memory_format: dict | None = None
    unbracketed: tuple[str, ...] = ()
    unstable: tuple[str, ...] = ()
    executor: str = "local"
    flops_discarded: float = 0.0
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        """Plain JSON fields."""
        return {
            "rungs": [r.to_dict() for r in self.rungs],
            "rung_epochs": list(self.rung_epochs),
            "eta": self.eta,
            "flops_spent": self.flops_spent,
            "full_flops_estimate": self.full_flops_estimate,
            "full_flops_prior_estimate": self.full_flops_prior_estimate,
            "budget": self.budget,
            "budget_flops": self.budget * self.full_flops_estimate,
            "cuts": [c.to_dict() for c in self.cuts],
            "lr_grids": _dict_or_none(self.lr_grids),
            "memory_format": self.memory_format,
            "unbracketed": list(self.unbracketed),
            "unstable": list(self.unstable),
            "executor": self.executor,
            "flops_discarded": self.flops_discarded,
            "wall_s": self.wall_s,
        }


@dataclass(frozen=True)
class RaceRecord:
    """The race: every candidate, what it spent, and its verdict.

    Attributes:
        entries: every candidate, in candidate order.
        spend: what the race ran and spent (:class:`RaceSpend`).
        winner: the best-ranked finished candidate's key; runner_up: the next one's.
        gap: the winner's paired accuracy gap over the runner-up.
        leaders: the winner and every finalist whose interval on the gap includes 0.
        tied: the leaders within ``tie_tolerance`` of the winner and not measurably worse
            in held-out loss; worse_by_loss: the others within that tolerance.
        pick: the key recommended; chosen_by_kind: ``"accuracy"`` or ``"cost"``
            (:attr:`chosen_by` says it in words).
        tie_tolerance, cost_tie: the accuracy and cost ties the verdict used.
        protocol: how the candidates were scored (:func:`~diagnose.decide.scoring_folds`).
        new_head: whether the model was raced under a new head (a headless backbone).
        front_rows, front: the learning-forgetting front of the finalists (JSON rows,
            as comparison rows are), when the race measured forgetting.
    """

    entries: tuple[RaceEntry, ...]
    spend: RaceSpend
    winner: str | None
    runner_up: str | None
    gap: PairedGap | None
    leaders: tuple[str, ...]
    tied: tuple[str, ...]
    worse_by_loss: tuple[str, ...]
    pick: str | None
    chosen_by_kind: str | None
    tie_tolerance: float
    cost_tie: float
    protocol: ScoringProtocol | None = None
    new_head: bool = False
    front_rows: tuple[dict, ...] | None = None
    front: tuple[Any, ...] | None = None

    @property
    def chosen_by(self) -> str | None:
        """How the pick was chosen among the leaders, in words."""
        if self.chosen_by_kind == "cost":
            return (
                f"the lowest cost among candidates within {self.tie_tolerance} of the winner's "
                "accuracy and not measurably worse in held-out loss"
            )
        return self.chosen_by_kind

    @property
    def within_noise(self) -> bool:
        """Whether another finalist is within noise of the winner."""
        return len(self.leaders) > 1

    @property
    def spent_fraction(self) -> float | None:
        """FLOPs spent over the full sweep's (None: no estimate)."""
        full = self.spend.full_flops_estimate
        return self.spend.flops_spent / full if full else None

    def entry(self, key: str) -> RaceEntry:
        """The candidate ``key`` (KeyError: the race had no such candidate)."""
        for e in self.entries:
            if e.key == key:
                return e
        raise KeyError(key)

    def to_dict(self) -> dict:
        """results.json's ``recommendation.trials``."""
        out = {
            "candidates": [e.to_dict() for e in self.entries],
            **self.spend.to_dict(),
            "winner": self.winner,
            "runner_up": self.runner_up,
            "gap": _dict_or_none(self.gap),
            "leaders": list(self.leaders),
            "within_noise": self.within_noise,
            "tied": list(self.tied),
            "worse_by_loss": list(self.worse_by_loss),
            "tie_tolerance": self.tie_tolerance,
            "pick": self.pick,
            "chosen_by_kind": self.chosen_by_kind,
            "chosen_by": self.chosen_by,
            "cost_tie": self.cost_tie,
        }
        if self.front_rows is not None:
            out["front_rows"] = [dict(r) for r in self.front_rows]
            out["front"] = [p.to_dict() for p in self.front or ()]
        return out | {"protocol": _dict_or_none(self.protocol), "new_head": self.new_head}


def _dict_or_none(value) -> dict | None:
    return None if value is None else value.to_dict()
