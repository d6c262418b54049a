"""The measured recommendation: which strategy actually did best.

A pure function: the comparison's strategy entries in, a typed
:class:`~diagnose.core.Selection` out, no I/O. Where :mod:`diagnose.decide.rules`
predicts a strategy from measurements taken before any training, this one reads the outcome of each
fine-tuning run and picks the winner by the rules a practitioner would apply:

1. only runs that finished (status ``"ok"``) with a validation accuracy count;
2. a run that forgets more than the budget (``max_forgetting``) is excluded;
   forgetting is the drop in source accuracy with the original head when
   source labels were available, else the disagreement with the pretrained
   model's source predictions (``1 - agreement``), both fractions in [0, 1];
3. the highest validation accuracy wins (never the test accuracy: that would
   select on the test set), but runs within ``tie_tolerance`` of it are tied
   and the cheapest of them (fewest training FLOPs) wins, because a difference
   that small is within the noise of one seed. FLOPs within :data:`COST_TIE` of
   the cheapest are a tie in cost (as in the trial race), and the higher
   validation accuracy among them wins: wall time varies from run to run, so it
   decides only when FLOPs are unknown, and the reasons say when FLOPs tie.

With several training seeds per strategy (``diagnose compare --seeds N``)
each entry's numbers are means over the seeds and ``spread`` holds their
standard deviation: the selection uses the means, and the reasons say when
the winner and another strategy differ by less than one standard deviation
(the larger of the two), i.e. when the seeds do not separate them.

Example::

    rec = select_strategy(results["strategies"], max_forgetting=0.05,
                          assessment=results["recommendation"])
    rec.strategy, rec.reasons[0], rec.regret

The reasons cite the measured values. A run left out is data first
(:func:`excluded`: a cause code and the values it cites, which the selection
reads) and words second (its ``reason``, made by :func:`excluded` and nowhere
else); the other helpers word one part each (the winner's forgetting, the check
of the assessment's prediction, no qualifying run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from diagnose.core import (
    EXCLUSION_CAUSES,
    Exclusion,
    Param,
    ParamError,
    Recommendation,
    Selection,
    StrategyEntry,
    check_params,
    join_labels,
    strategy_label,
)

__all__ = [
    "as_entry",
    "budget_cost",
    "cost_text",
    "cost_tie",
    "COST_TIE",
    "DEFAULT_TIE_TOLERANCE",
    "entry_label",
    "excluded",
    "FLOAT_SLACK",
    "forgetting_of",
    "forgetting_reason",
    "no_winner_reasons",
    "prediction_check",
    "select_strategy",
    "val_text",
    "wall_text",
    "why_not_ok",
    "within_spread",
]

DEFAULT_TIE_TOLERANCE = 0.005
_TIE_TOLERANCE = Param(
    "tie_tolerance", "float", low=0, meaning="(a validation-accuracy difference)"
)
# Training FLOPs within this fraction of each other are a tie in cost, never "cheaper":
# the counts of two strategies that train the same modules differ by a head or a bias
# (and the race's cost model agrees with FlopCounterMode to a few percent).
COST_TIE = 0.05
# Accuracies are k / n in float: a difference exactly at the tolerance may round past it.
FLOAT_SLACK = 1e-12


def forgetting_of(entry: StrategyEntry | dict) -> tuple[float | None, str | None]:
    """How much a strategy forgot of the source task, and how that was measured.

    Returns ``(value, measure)``: the source-accuracy drop (``"source_accuracy_drop"``)
    when it was measured, else ``1 - agreement`` with the pretrained model's source
    predictions (``"disagreement"``), else ``(None, None)``. Both are fractions; 0
    means nothing was forgotten. Example::

        forgetting_of({"forgetting": {"agreement": 0.9}})  # (0.1, "disagreement")
    """
    forgetting = as_entry(entry).forgetting
    drop = forgetting.source_accuracy_drop
    if drop is not None:
        return drop, "source_accuracy_drop"
    agreement = forgetting.agreement
    if agreement is not None:
        return 1.0 - agreement, "disagreement"
    return None, None


def _predicted(assessment: Recommendation | dict | None, names: set[str]) -> str | None:
    # The typed recommendation, or (a user's script) the assessment's results dict or its
    # "recommendation" sub-dict.
    if isinstance(assessment, Recommendation):
        rec = assessment
    elif isinstance(assessment, dict):
        sub = assessment.get("recommendation")
        rec = Recommendation.from_dict(sub if isinstance(sub, dict) else assessment)
    else:
        return None
    # A measured partial recommendation names its depth: the row of that depth when
    # the comparison ran partial at several (compare --unfreeze 1,2,4).
    return rec.row if rec.row in names else rec.strategy


def _cost_key(entry: StrategyEntry) -> tuple[float, float]:
    # FLOPs are deterministic; wall time is noise between runs, so it only breaks
    # ties when FLOPs are unknown (otherwise the strategy order decides).
    flops, wall = entry.cost.flops, entry.cost.wall_s
    if flops is not None:
        return (flops, 0.0)
    return (math.inf, math.inf if wall is None else wall)


def cost_tie(a: float, b: float) -> bool:
    """Two costs (FLOPs) in a tie: neither more than :data:`COST_TIE` below the other.
    The comparison's selection and the trial race's pick both use it."""
    return min(a, b) >= max(a, b) * (1 - COST_TIE)


def _same_flops(a: StrategyEntry, b: StrategyEntry) -> bool:
    fa, fb = a.cost.flops, b.cost.flops
    return fa is not None and fb is not None and cost_tie(fa, fb)


def select_strategy(
    strategies: Sequence[StrategyEntry | Mapping],
    *,
    max_forgetting: float | None = None,
    assessment: Recommendation | dict | None = None,
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE,
) -> Selection:
    """The measured best strategy of a comparison, with its reasons.

    ``strategies`` are the comparison's entries (:class:`~diagnose.core.StrategyEntry`, or
    results.json's ``strategies`` dicts);
    ``max_forgetting`` is the largest tolerated forgetting (fraction in [0, 1],
    see :func:`forgetting_of`; None: no budget); ``assessment`` is the
    assessment's :class:`~diagnose.core.Recommendation` (or, from a script, its results
    dict or that dict's ``recommendation``), whose predicted strategy
    is checked against the measured one; ``tie_tolerance`` is the validation-
    accuracy difference (fraction) below which the cheaper run wins.

    Returns a :class:`~diagnose.core.Selection` with ``strategy`` (None when no run
    qualifies), its
    ``val_accuracy`` (the mean over seeds when there are several, with
    ``val_accuracy_std`` and the number of ``seeds``; ``within_spread`` names
    the strategies less than one std from it), ``test_accuracy``,
    ``forgetting``, ``cost_flops``, the
    ``excluded`` runs (:class:`~diagnose.core.Exclusion`: a cause code, the values it
    cites and a reason in words), the ``ranking`` of qualifying runs
    (best first), ``reasons`` citing the values, the ``assessment_prediction``,
    ``agrees_with_assessment`` and ``regret``: the measured best's validation
    accuracy minus the predicted strategy's (None when it was not measured).

    Example::

        select_strategy([
            {"name": "feature_extraction", "status": "ok",
             "target": {"val_accuracy": 0.90}, "cost": {"flops": 1e9}},
            {"name": "full_low_lr", "status": "ok",
             "target": {"val_accuracy": 0.903}, "cost": {"flops": 1e11}},
        ]).strategy  # "feature_extraction": tied within 0.005, 100x cheaper
    """
    entries, budget, tolerance = _checked(strategies, max_forgetting, tie_tolerance)
    predicted = _predicted(assessment, {e.name for e in entries})
    left_out, measured, eligible = _partition(entries, budget)
    if not eligible:
        least = [(forgetting_of(e)[0], entry_label(e)) for e in measured]
        least = [k for k in least if k[0] is not None]
        reasons = no_winner_reasons(len(entries), len(measured), left_out, budget, least)
        return Selection(max_forgetting=budget, tie_tolerance=tolerance, excluded=left_out,
                         reasons=tuple(reasons), assessment_prediction=predicted)  # fmt: skip
    best_val = max(_val(e) for e in eligible)
    tied = [e for e in eligible if _val(e) >= best_val - tolerance - FLOAT_SLACK]
    order = {id(e): i for i, e in enumerate(eligible)}
    winner, band = _cheapest(tied, order)
    rest = sorted(
        (e for e in eligible if e is not winner),
        key=lambda e: (-_val(e), *_cost_key(e), order[id(e)]),
    )
    name, val = str(winner.name), _val(winner)
    forgot, measure = forgetting_of(winner)
    scope = " within the forgetting budget" if budget is not None else ""
    reasons = [_winner_reason(winner, tied, band, tolerance, best_val, scope)]
    if rest:
        runner = rest[0]
        reasons.append(
            f"Next best: {entry_label(runner)} at {val_text(runner, _val(runner))} "
            f"({_val(runner) - val:+.3f}), {cost_text(runner)} against {cost_text(winner)}."
        )
    close, spread_reason = within_spread(winner, rest, _val)
    reasons += [spread_reason] if spread_reason else []
    reasons.append(forgetting_reason(strategy_label(name, start=True), forgot, measure, budget))
    reasons += _context_reasons(left_out, measured, name, val)
    ran = any(e.name == predicted for e in entries)
    agrees, regret, said = prediction_check(
        predicted, name, val, _measured_val(measured, predicted), left_out, ran=ran
    )
    return Selection(
        strategy=name,
        val_accuracy=val,
        val_accuracy_std=winner.spread_std("target", "val_accuracy"),
        seeds=winner.n_seeds,
        within_spread=tuple(str(e.name) for e in close),
        test_accuracy=winner.target.test_accuracy,
        forgetting=forgot,
        forgetting_measure=measure,
        cost_flops=winner.cost.flops,
        wall_s=winner.cost.wall_s,
        max_forgetting=budget,
        budget_cost=budget_cost(left_out, measured, val)[0],
        tie_tolerance=tolerance,
        tied=tuple(str(e.name) for e in tied),
        excluded=left_out,
        ranking=(name, *(str(e.name) for e in rest)),
        reasons=(*reasons, *said),
        assessment_prediction=predicted,
        agrees_with_assessment=agrees,
        regret=regret,
    )


def _val(entry: StrategyEntry) -> float:
    return entry.target.val_accuracy


def _measured_val(measured: list[StrategyEntry], name: str | None) -> float | None:
    """The best validation accuracy a run of ``name`` measured (None: none did)."""
    vals = [_val(e) for e in measured if e.name == name]
    return max(vals) if vals else None


def _checked(strategies, max_forgetting, tie_tolerance):
    """``(entries, budget, tolerance)`` after the arguments' checks."""
    check_params("select_strategy", max_forgetting=max_forgetting)
    if not _TIE_TOLERANCE.ok(tie_tolerance):  # the Python API's own: no CLI flag
        raise ParamError(_TIE_TOLERANCE, "select_strategy", tie_tolerance)
    budget = None if max_forgetting is None else float(max_forgetting)
    return _check_entries(strategies), budget, float(tie_tolerance)


def _check_entries(strategies) -> list[StrategyEntry]:
    """The entries as :class:`StrategyEntry` records (a dict is read with ``from_dict``)."""
    what = "a list of StrategyEntry records or results.json dicts"
    if not isinstance(strategies, (list, tuple)):
        raise TypeError(
            f"The 'strategies' parameter of select_strategy must be {what}. "
            f"Got {type(strategies).__name__} instead."
        )
    for i, entry in enumerate(strategies):
        if not isinstance(entry, (StrategyEntry, Mapping)):
            raise TypeError(
                f"The 'strategies' parameter of select_strategy must be {what}. "
                f"Got {type(entry).__name__} at index {i} instead."
            )
    return [as_entry(e) for e in strategies]


def _partition(entries: list[StrategyEntry], budget: float | None):
    """``(excluded, measured, eligible)``: runs left out (:class:`Exclusion`), runs that
    finished with a validation accuracy, and those within the budget."""
    left_out: list[Exclusion] = []
    measured: list[StrategyEntry] = []
    eligible: list[StrategyEntry] = []
    for entry in entries:
        name = str(entry.name or "?")
        if not entry.ok:
            left_out.append(excluded(name, "not_ok", entry=entry))
            continue
        if entry.target.val_accuracy is None:
            left_out.append(excluded(name, "no_val_accuracy"))
            continue
        measured.append(entry)
        forgot, measure = forgetting_of(entry)
        if budget is not None and forgot is None:
            left_out.append(excluded(name, "forgetting_unmeasured", budget=budget))
        elif budget is not None and forgot > budget:
            left_out.append(
                excluded(name, "over_budget", measured=forgot, measure=measure, budget=budget)
            )
        else:
            eligible.append(entry)
    return tuple(left_out), measured, eligible


def _winner_reason(winner, tied, band, tolerance: float, best_val: float, scope: str) -> str:
    """The first reason: the winner's accuracy and, among tied runs, why it won (``band``:
    the tied runs of the cheapest one's cost, the winner among them)."""
    val, test, seeds = _val(winner), winner.target.test_accuracy, winner.n_seeds
    opening = strategy_label(str(winner.name), start=True)
    notes = [f"mean ± std over {seeds} seeds"] if seeds > 1 else []
    notes += [f"test {test:.3f}"] if test is not None else []
    test_text = f" ({'; '.join(notes)})" if notes else ""
    if len(tied) == 1:
        return (
            f"{opening} reached the highest validation accuracy{scope}: "
            f"{val_text(winner, val)}{test_text}."
        )
    text = (
        f"{opening} reached a validation accuracy of {val_text(winner, val)}{test_text}, within "
        f"{tolerance:.3f} of the best{scope} ({best_val:.3f})"
    )
    return text + _tie_clause(winner, tied, band) + "."


def _tie_clause(winner: StrategyEntry, tied: list, band: list) -> str:
    """Why ``winner`` won among the runs ``tied`` in accuracy: the cost, a cost tie within
    ``band`` (the cheapest run and those of its cost), or uncounted FLOPs."""
    in_band = {id(e) for e in band}
    others = [e for e in tied if e is not winner]
    if winner.cost.flops is None:  # then no tied run's FLOPs were counted
        wall = winner.cost.wall_s
        shorter = wall is not None and all(
            e.cost.wall_s is not None and wall < e.cost.wall_s for e in others
        )
        how = (
            "its shorter wall time decides"
            if shorter
            else "wall time does not separate them, so the higher validation accuracy, then "
            "the order of --strategies, decides"
        )
        return (
            f"; no tied run's FLOPs were counted: {how} ({join_labels(wall_text(e) for e in tied)})"
        )
    same = [e for e in others if id(e) in in_band]
    counted = [e for e in others if id(e) not in in_band and e.cost.flops is not None]
    uncounted = [e for e in others if e.cost.flops is None]
    parts = []
    if counted:
        least = min(float(e.cost.flops) for e in band)
        where = (
            f"the cheapest ({cost_text(winner)})"
            if winner.cost.flops == least
            else f"in the cost tie of the cheapest ({_flops_text(band)})"
        )
        dearer = "; ".join(f"{entry_label(e)} {cost_text(e)}" for e in counted)
        parts.append(
            f"among the {len(tied)} tied strategies it is {where}, vs {dearer}, more than "
            f"{COST_TIE:.0%} above the cheapest"
        )
    if same:
        # Never "cheapest" against a run of the same FLOPs: say they tie, and on what
        # the choice then rests; wall time is shown but, being noise, not used.
        higher = all(_val(winner) > _val(e) for e in same)
        decides = (
            "its higher validation accuracy decides"
            if higher
            else "the order of --strategies decides"
        )
        parts.append(
            f"it {'also ' if counted else ''}ties on training compute with "
            + join_labels(entry_label(e) for e in same)
            + f" ({_flops_text([winner, *same])}), so {decides} (wall time varies from run to "
            "run and is not used: " + join_labels(wall_text(e) for e in [winner, *same]) + ")"
        )
    if uncounted:
        parts.append(
            join_labels(entry_label(e) for e in uncounted)
            + " had no counted FLOPs, and runs with counted FLOPs come first"
        )
    return "".join("; " + p for p in parts)


def _cheapest(
    tied: list[StrategyEntry], order: dict[int, int]
) -> tuple[StrategyEntry, list[StrategyEntry]]:
    """``(winner, band)``: the band is the cheapest tied run and those of the same cost
    (:func:`cost_tie`), and the winner its most accurate, then the first in input order."""
    cheapest = min(tied, key=lambda e: (*_cost_key(e), -_val(e), order[id(e)]))
    band = [e for e in tied if e is cheapest or _same_flops(e, cheapest)]
    return max(band, key=lambda e: (_val(e), -order[id(e)])), band


def _flops_text(entries: list[StrategyEntry]) -> str:
    """'1e+09 FLOPs each', or '3.26e+08 to 3.27e+08 FLOPs, within 5% of the cheapest'."""
    flops = sorted(float(e.cost.flops) for e in entries)
    if f"{flops[0]:.3g}" == f"{flops[-1]:.3g}":
        return f"{flops[0]:.3g} FLOPs each"
    return f"{flops[0]:.3g} to {flops[-1]:.3g} FLOPs, within {COST_TIE:.0%} of the cheapest"


def budget_cost(
    left_out: Sequence[Exclusion], measured: list[StrategyEntry], val: float
) -> tuple[float | None, StrategyEntry | None]:
    """``(accuracy given up, the run that would have given it)``: how far the most
    accurate run over the forgetting budget beats the pick (``val``); ``(None, None)``
    when no run over the budget is more accurate."""
    over = {x.name for x in left_out if x.cause == "over_budget"}
    above = [e for e in measured if str(e.name) in over and _val(e) > val]
    if not above:
        return None, None
    best = max(above, key=_val)
    return _val(best) - val, best


def _context_reasons(left_out, measured, name: str, val: float) -> list[str]:
    """What the runs around the winner say: those over the budget, and from scratch."""
    out = []
    over = [x.name for x in left_out if x.cause == "over_budget"]
    if over:
        out.append(
            "Excluded for exceeding the forgetting budget: "
            + join_labels(strategy_label(n) for n in over)
            + "."
        )
    cost, best = budget_cost(left_out, measured, val)
    if cost is not None:
        forgot, _ = forgetting_of(best)
        out.append(
            f"The forgetting budget costs {cost:.3f} validation accuracy: "
            f"{entry_label(best)} reached {_val(best):.3f} but forgot {forgot:.3f}."
        )
    scratch = _measured_val(measured, "scratch")
    if scratch is not None and name != "scratch":
        out.append(
            f"Training from scratch reached {scratch:.3f}, so pretraining buys "
            f"{val - scratch:+.3f} validation accuracy here."
        )
    return out


def as_entry(entry: StrategyEntry | Mapping) -> StrategyEntry:
    """``entry`` as a :class:`StrategyEntry` (a results.json dict is read with ``from_dict``)."""
    return entry if isinstance(entry, StrategyEntry) else StrategyEntry.from_dict(entry)


def excluded(
    name: str,
    cause: str,
    *,
    entry: StrategyEntry | None = None,
    measured: float | None = None,
    measure: str | None = None,
    budget: float | None = None,
) -> Exclusion:
    """A run left out of the selection: ``cause`` (one of
    :data:`~diagnose.core.EXCLUSION_CAUSES`) with the values it cites, and its reason.

    ``entry`` is the run, for ``not_ok`` (its status and message); ``measured``,
    ``measure`` and ``budget`` the forgetting and the budget, for ``over_budget``
    (``budget`` alone for ``forgetting_unmeasured``).

    Example:
        >>> excluded("full_low_lr", "over_budget", measured=0.12,
        ...          measure="source_accuracy_drop", budget=0.05).reason
        'forgets too much: source accuracy drop 0.120 is above the budget of 0.050'
    """
    if cause not in EXCLUSION_CAUSES:
        raise ValueError(f"unknown exclusion cause {cause!r}; one of {EXCLUSION_CAUSES}")
    if cause == "not_ok":
        reason = why_not_ok(entry) if entry is not None else "did not finish"
    elif cause == "no_val_accuracy":
        reason = "finished without a validation accuracy"
    elif cause == "forgetting_unmeasured":
        reason = (
            "its forgetting was not measured, so it cannot be shown to stay within the "
            f"budget of {budget:.3f}"
        )
    else:
        label = "source accuracy drop" if measure == "source_accuracy_drop" else "disagreement"
        reason = f"forgets too much: {label} {measured:.3f} is above the budget of {budget:.3f}"
    return Exclusion(
        name=name, cause=cause, reason=reason, measured=measured, measure=measure, budget=budget
    )


def why_not_ok(entry: StrategyEntry) -> str:
    """Why a run that did not finish is excluded, in words (status, where it diverged, LR)."""
    status, message = entry.status, entry.message
    if status == "diverged":
        div = entry.diverged
        where = [
            f"{k} {v:g}"
            for k, v in (("epoch", div and div.epoch), ("step", div and div.step))
            if v is not None
        ]
        lr = div.lr if div is not None else None
        text = "diverged" + (f" at {', '.join(where)}" if where else "")
        text += f" (LR {lr:.3g})" if lr is not None else ""
        return text + (f": {message}" if message else "")
    if status == "failed":
        return "failed" + (f": {message}" if message else "")
    return f"status {status!r}" + (f": {message}" if message else "")


def wall_text(entry: StrategyEntry) -> str:
    """'<strategy> 12.3 s', or '<strategy> unknown'."""
    wall = entry.cost.wall_s
    return (
        f"{entry_label(entry)} {wall:.1f} s"
        if wall is not None
        else f"{entry_label(entry)} unknown"
    )


def entry_label(entry: StrategyEntry) -> str:
    """The display name of an entry's strategy."""
    return strategy_label(entry.name or "?")


def cost_text(entry: StrategyEntry) -> str:
    """An entry's training FLOPs and wall seconds, in words."""
    flops, wall = entry.cost.flops, entry.cost.wall_s
    parts = []
    if flops is not None:
        parts.append(f"{flops:.3g} FLOPs")
    if wall is not None:
        parts.append(f"{wall:.1f} s")
    return ", ".join(parts) or "unknown cost"


def forgetting_reason(opening: str, forgot: float | None, measure: str | None, budget) -> str:
    """The winner's forgetting (source-accuracy drop or disagreement) against the budget."""
    if forgot is None:
        return f"{opening}'s forgetting of the source task was not measured."
    limit = f" (budget {budget:.3f})." if budget is not None else "."
    if measure == "source_accuracy_drop":
        return f"It lowered source accuracy with the original head by {forgot:.3f}" + limit
    return (
        f"Its source predictions disagree with the pretrained model's on {forgot:.3f} of "
        "the source images" + limit
    )


def no_winner_reasons(
    n_runs: int,
    n_measured: int,
    left_out: Sequence[Exclusion],
    budget: float | None,
    forgetting: list[tuple[float, str]],
) -> list[str]:
    """Why no strategy qualifies: none ran, none finished, or every one forgets too much.

    ``forgetting`` holds ``(forgetting, label)`` of every finished run whose
    forgetting was measured.
    """
    if not n_runs:
        return ["The comparison holds no strategy runs."]
    if not n_measured:
        return [
            "No strategy finished with a validation accuracy: "
            + "; ".join(f"{strategy_label(x.name)} {x.reason}" for x in left_out)
            + "."
        ]
    reasons = [
        f"All {n_measured} finished strategies forget more than the budget of "
        f"{budget:.3f} or were not measured for forgetting."
    ]
    if forgetting:
        least, who = min(forgetting)
        reasons.append(
            f"The least forgetting was {who}'s ({least:.3f}); a budget of at least "
            "that would admit it."
        )
    return reasons


def prediction_check(
    predicted: str | None,
    name: str,
    val: float,
    predicted_val: float | None,
    left_out: Sequence[Exclusion],
    *,
    ran: bool = True,
) -> tuple[bool | None, float | None, list[str]]:
    """``(agrees, regret, reasons)``: the measured winner ``name`` against the prediction.

    ``regret`` is the winner's validation accuracy minus the predicted
    strategy's (None when the prediction was not measured: ``ran`` says whether the
    comparison ran it at all).
    """
    reasons: list[str] = []
    if predicted is None:
        return None, None, reasons
    regret = None
    agrees = predicted == name
    said = strategy_label(predicted)
    if predicted_val is not None:
        regret = val - predicted_val
    if agrees:
        reasons.append(f"This agrees with the assessment's prediction ({said}).")
    elif predicted_val is not None and regret >= 0:
        reasons.append(
            f"The assessment predicted {said}, which reached {predicted_val:.3f}: "
            f"following the prediction would have lost {regret:.3f} validation accuracy."
        )
    elif predicted_val is not None:
        why = next((x.reason for x in left_out if x.name == predicted), None)
        reasons.append(
            f"The assessment predicted {said}, which reached {predicted_val:.3f} "
            f"({-regret:.3f} more) but "
            + (f"was excluded: {why}." if why else "costs more for a tie.")
        )
    elif ran:
        reasons.append(
            f"The assessment predicted {said}, which was not measured successfully here."
        )
    else:
        reasons.append(
            f"The assessment predicted {said}, which is not among the strategies compared "
            "here, so the prediction is not checked."
        )
    return agrees, regret, reasons


def val_text(entry: StrategyEntry, val: float) -> str:
    """``val`` as text, with `` ± std`` when the entry has a seed spread."""
    std = entry.spread_std("target", "val_accuracy")
    return f"{val:.3f}" if std is None else f"{val:.3f} ± {std:.3f}"


def within_spread(
    winner: StrategyEntry,
    others: list[StrategyEntry],
    val_of: Callable[[StrategyEntry], float],
) -> tuple[list[StrategyEntry], str | None]:
    """The strategies whose mean is within one std of the winner's, and the reason saying so."""
    std_w = winner.spread_std("target", "val_accuracy")
    if std_w is None:
        return [], None
    close, far = [], []
    for e in others:
        std_e = e.spread_std("target", "val_accuracy")
        if std_e is None:
            continue
        (close if abs(val_of(winner) - val_of(e)) <= max(std_w, std_e) else far).append(e)
    name, val = entry_label(winner), val_of(winner)
    if close:
        listed = "; ".join(
            f"{entry_label(e)} {val_text(e, val_of(e))} ({val_of(e) - val:+.3f})" for e in close
        )
        return close, (
            f"Over {winner.n_seeds} seeds, {name} ({val_text(winner, val)}) is within one "
            f"standard deviation of {listed}: the seeds do not separate them, and another "
            "set of seeds could rank them the other way."
        )
    if far:
        runner = max(far, key=val_of)
        std_r = runner.spread_std("target", "val_accuracy")
        return [], (
            f"Over {winner.n_seeds} seeds the lead over {entry_label(runner)} "
            f"({val - val_of(runner):+.3f}) exceeds one standard deviation ({std_w:.3f} and "
            f"{std_r:.3f})."
        )
    return [], None
