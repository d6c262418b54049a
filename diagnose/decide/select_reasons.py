"""The reasons of the measured selection (:mod:`diagnose.decide.select`), in words.

Each function turns one part of the selection (a run left out, the winner's
forgetting, the check of the assessment's prediction, no qualifying run) into
sentences that cite the measured values. A run left out is data first
(:func:`excluded`: a cause code and the values it cites, which the selection
reads) and words second (its ``reason``, made here and nowhere else).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from diagnose.core import EXCLUSION_CAUSES, Exclusion, StrategyEntry, strategy_label

__all__ = [
    "as_entry",
    "cost_text",
    "entry_label",
    "excluded",
    "forgetting_reason",
    "no_winner_reasons",
    "prediction_check",
    "val_text",
    "wall_text",
    "why_not_ok",
    "within_spread",
]


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
) -> tuple[bool | None, float | None, list[str]]:
    """``(agrees, regret, reasons)``: the measured winner ``name`` against the prediction.

    ``regret`` is the winner's validation accuracy minus the predicted
    strategy's (None when the prediction was not measured).
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
    else:
        reasons.append(
            f"The assessment predicted {said}, which was not measured successfully here."
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
