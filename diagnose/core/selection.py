"""The comparison's measured selection, typed: the winner, the runs left out and why.

Written by :func:`diagnose.decide.select.select_strategy` (results.json's
``comparison_recommendation``) and read by the CLI and the demo (the report reads
the same section of results.json). A
run left out is an :class:`Exclusion`: its cause is a code with the values it
cites (what decisions read), and ``reason`` is the same in words (what people
read), made once where the exclusion is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnose.core.record import (
    Record,
    as_bool,
    as_integer,
    as_number,
    as_records,
    as_text,
    as_tuple,
    read_as,
)

__all__ = ["EXCLUSION_CAUSES", "Exclusion", "Selection"]

#: Why a run is left out of the selection: it did not finish (``not_ok``), it has no
#: validation accuracy, its forgetting was not measured under a budget, or it forgot
#: more than the budget.
EXCLUSION_CAUSES = ("not_ok", "no_val_accuracy", "forgetting_unmeasured", "over_budget")

# The values an exclusion cites, written only where the cause has them.
_CITED = ("measured", "measure", "budget")


@dataclass(frozen=True)
class Exclusion(Record):
    """A comparison run the selection left out.

    Attributes:
        name: the run's row (``"partial@2"``).
        cause: one of :data:`EXCLUSION_CAUSES`.
        reason: the cause in words, citing the values.
        measured: ``over_budget``: the forgetting measured (a fraction).
        measure: ``over_budget``: ``"source_accuracy_drop"`` or ``"disagreement"``.
        budget: ``over_budget`` and ``forgetting_unmeasured``: the budget (a fraction).
    """

    name: str | None = read_as(as_text)
    cause: str | None = read_as(as_text)
    reason: str | None = read_as(as_text)
    measured: float | None = read_as(as_number)
    measure: str | None = read_as(as_text)
    budget: float | None = read_as(as_number)

    def emits(self, name: str) -> bool:
        return name not in _CITED or getattr(self, name) is not None


@dataclass(frozen=True)
class Selection(Record):
    """The measured best strategy of a comparison (None when no run qualifies).

    Attributes:
        strategy: the winning row.
        val_accuracy, val_accuracy_std, seeds: its validation accuracy (the mean over
            seeds), the seeds' standard deviation and their number.
        within_spread: rows less than one standard deviation from it.
        test_accuracy, forgetting, forgetting_measure, cost_flops, wall_s: its numbers.
        max_forgetting: the budget it was chosen under; budget_cost: the validation
            accuracy the budget gave up (None: none).
        tie_tolerance: the accuracy difference within which the cheaper run wins;
            tied: the rows within it of the best.
        excluded: the runs left out, as :class:`Exclusion` records.
        ranking: the qualifying rows, best first.
        reasons: sentences that cite the measured values.
        assessment_prediction, agrees_with_assessment, regret: the assessment's
            predicted row, whether it won, and the winner's accuracy minus its own.
    """

    strategy: str | None = read_as(as_text)
    val_accuracy: float | None = read_as(as_number)
    val_accuracy_std: float | None = read_as(as_number)
    seeds: int | None = read_as(as_integer)
    within_spread: tuple = read_as(as_tuple, default=())
    test_accuracy: float | None = read_as(as_number)
    forgetting: float | None = read_as(as_number)
    forgetting_measure: str | None = read_as(as_text)
    cost_flops: float | None = read_as(as_number)
    wall_s: float | None = read_as(as_number)
    max_forgetting: float | None = read_as(as_number)
    budget_cost: float | None = read_as(as_number)
    tie_tolerance: float | None = read_as(as_number)
    tied: tuple = read_as(as_tuple, default=())
    excluded: tuple[Exclusion, ...] = read_as(as_records(Exclusion), default=())
    ranking: tuple = read_as(as_tuple, default=())
    reasons: tuple = read_as(as_tuple, default=())
    assessment_prediction: str | None = read_as(as_text)
    agrees_with_assessment: bool | None = read_as(as_bool)
    regret: float | None = read_as(as_number)
