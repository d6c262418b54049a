"""The learning–forgetting front of a comparison: the strategies no other beats on both.

A strategy is on the front when no other finished strategy reached at least its
validation accuracy while forgetting no more, and did strictly better on one of
the two (Pareto optimality with accuracy up and forgetting down). Forgetting is
:func:`diagnose.decide.select.forgetting_of`: the source-accuracy drop, else the
disagreement with the pretrained model. Methods that train fewer parameters
learn less and forget less (Biderman et al., TMLR 2024, "LoRA Learns Less and
Forgets Less"): the front draws that trade-off on the user's own model and data,
and a forgetting budget (:func:`~diagnose.decide.select_strategy`) picks the
most accurate strategy within it, or a cheaper one tied with it within the tie
tolerance, which may lie just off the front.

Example:
    >>> [p.name for p in learning_forgetting_front(results["strategies"])]
    ['feature_extraction', 'lp_ft', 'full_low_lr']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from diagnose.core import StrategyEntry
from diagnose.decide.race_record import RaceEntry, RungScore
from diagnose.decide.select import as_entry, forgetting_of

__all__ = ["FrontPoint", "front_points", "learning_forgetting_front", "race_front_rows"]


@dataclass(frozen=True)
class FrontPoint:
    """One finished strategy placed by what it learned and what it forgot.

    Attributes:
        name: the strategy (entry name, ``partial@2`` style for several depths).
        val_accuracy: its validation accuracy (the selection's measure).
        forgetting: its forgetting, a fraction (0: nothing forgotten; a negative
            source-accuracy drop: the source task got better).
        measure: ``"source_accuracy_drop"`` or ``"disagreement"``.
        flops: its training FLOPs (None when not counted).
    """

    name: str
    val_accuracy: float
    forgetting: float
    measure: str
    flops: float | None

    def to_dict(self) -> dict:
        """Plain JSON fields."""
        return asdict(self)


def front_points(
    strategies: Sequence[StrategyEntry | Mapping], disagreement: bool = False
) -> list[FrontPoint]:
    """Every strategy that finished with both a validation accuracy and a forgetting.

    Forgetting is :func:`~diagnose.decide.select.forgetting_of`'s, or with
    ``disagreement`` one minus the agreement for every run. Training from scratch is
    left out: it starts from random weights, so what it "forgot" of the source is a
    baseline, not forgetting.
    """
    out = []
    for raw in strategies:
        e = as_entry(raw)
        if disagreement:
            a = e.forgetting.agreement
            forgot, measure = (None, None) if a is None else (1.0 - a, "disagreement")
        else:
            forgot, measure = forgetting_of(e)
        val = e.target.val_accuracy
        if e.ok and e.name != "scratch" and val is not None and forgot is not None:
            out.append(FrontPoint(str(e.name), float(val), float(forgot), measure, e.cost.flops))
    return out


def _dominates(a: FrontPoint, b: FrontPoint) -> bool:
    at_least = a.val_accuracy >= b.val_accuracy and a.forgetting <= b.forgetting
    better = a.val_accuracy > b.val_accuracy or a.forgetting < b.forgetting
    return at_least and better


def learning_forgetting_front(strategies: Sequence[StrategyEntry | Mapping]) -> list[FrontPoint]:
    """The strategies on the front, from the least forgetting to the most accurate.

    Two strategies at the same accuracy and forgetting are both on it. Forgetting is
    compared in one measure only: when some runs have a source-accuracy drop and
    others only an agreement, the front uses the disagreement of all that have it.
    """
    points = front_points(strategies)
    if len({p.measure for p in points}) > 1:
        # Mixed measures cannot be compared: fall back to disagreement, which every
        # run with a source pass measured.
        points = front_points(strategies, disagreement=True)
    front = [p for p in points if not any(_dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p.forgetting, -p.val_accuracy, p.name))


def race_front_rows(entries: Sequence[RaceEntry], reference_accuracy: float | None) -> list[dict]:
    """The race's arms as comparison rows (results.json's ``trials.front_rows``) for
    :func:`learning_forgetting_front`.

    Per arm (a strategy and its depth or rank), the LR with the best held-out accuracy
    among the candidates whose last rung measured forgetting (the race measures it at
    its full epochs only); ``reference_accuracy`` is the pretrained model's source
    accuracy, which turns a source accuracy into a drop (None: agreement only).
    """
    best: dict[str, tuple[RaceEntry, RungScore]] = {}
    for e in entries:
        last = e.rungs[-1] if e.rungs else None
        if e.status != "ok" or last is None or last.agreement is None:
            continue
        held = best.get(e.candidate.arm)
        if held is None or last.val_accuracy > held[1].val_accuracy:
            best[e.candidate.arm] = (e, last)
    rows = []
    for arm, (e, last) in best.items():
        acc = last.source_accuracy
        drop = None if acc is None or reference_accuracy is None else reference_accuracy - acc
        rows.append(
            {
                "name": arm,
                "status": "ok",
                "target": {"val_accuracy": last.val_accuracy},
                "forgetting": {
                    "agreement": last.agreement,
                    "source_accuracy": acc,
                    "source_accuracy_drop": drop,
                },
                "cost": {"flops": e.full_run_flops_estimate},
            }
        )
    return rows
