"""The reasons of the measured selection (:mod:`diagnose.decide.select`), in words.

Each function turns one part of the selection (a run that did not finish, the
winner's forgetting, the check of the assessment's prediction, no qualifying
run) into sentences that cite the measured values.
"""

from __future__ import annotations

from diagnose.core import finite, section, strategy_label

__all__ = [
    "cost_text",
    "entry_label",
    "forgetting_reason",
    "no_winner_reasons",
    "prediction_check",
    "wall_text",
    "why_not_ok",
]


def why_not_ok(entry: dict) -> str:
    """Why a run that did not finish is excluded, in words (status, where it diverged, LR)."""
    status = entry.get("status")
    message = entry.get("message")
    if status == "diverged":
        div = section(entry, "diverged")
        where = [f"{k} {div[k]:g}" for k in ("epoch", "step") if finite(div.get(k)) is not None]
        lr = finite(div.get("lr"))
        text = "diverged" + (f" at {', '.join(where)}" if where else "")
        text += f" (LR {lr:.3g})" if lr is not None else ""
        return text + (f": {message}" if message else "")
    if status == "failed":
        return "failed" + (f": {message}" if message else "")
    return f"status {status!r}" + (f": {message}" if message else "")


def wall_text(entry: dict) -> str:
    """'<strategy> 12.3 s', or '<strategy> unknown'."""
    wall = finite(section(entry, "cost").get("wall_s"))
    return (
        f"{entry_label(entry)} {wall:.1f} s"
        if wall is not None
        else f"{entry_label(entry)} unknown"
    )


def entry_label(entry: dict) -> str:
    """The display name of an entry's strategy."""
    return strategy_label(entry.get("name") or "?")


def cost_text(entry: dict) -> str:
    """An entry's training FLOPs and wall seconds, in words."""
    cost = section(entry, "cost")
    flops, wall = finite(cost.get("flops")), finite(cost.get("wall_s"))
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
    excluded: list[dict],
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
            + "; ".join(f"{strategy_label(x['name'])} {x['reason']}" for x in excluded)
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
    excluded: list[dict],
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
        why = next((x["reason"] for x in excluded if x["name"] == predicted), None)
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
