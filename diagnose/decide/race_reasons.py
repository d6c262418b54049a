"""The race's recommendation in words: what was measured, the lead, the tie-break.

:func:`race_reasons` turns the race's record (:class:`RaceRecord`) into the
recommendation's reasons, what would change it, and its confidence; every
sentence cites the measured values it rests on.
"""

from __future__ import annotations

from diagnose.core import Recommendation
from diagnose.decide.race_record import RaceEntry, RaceRecord

__all__ = ["race_reasons"]


def _names(keys: list[str], shown: int = 4) -> str:
    more = len(keys) - shown
    return ", ".join(keys[:shown]) + (f" and {more} more" if more > 0 else "")


def _pct(v: float) -> str:
    return f"{100 * v:+.1f}"


def race_reasons(
    trials: RaceRecord, pick: RaceEntry, prior: Recommendation
) -> tuple[list, list, str]:
    """``(reasons, would_change_if, confidence)`` of the race's ``pick`` (one of
    ``trials.entries``) against the rule ``prior``."""
    gap, last = trials.gap, pick.rungs[-1]
    reasons = [
        _measured_reason(trials),
        f"{pick.key} reached {last.val_accuracy:.3f} held-out accuracy after {last.epochs} epochs.",
    ]
    if gap is not None:
        reasons.append(
            (
                "Its lead"
                if pick.key == trials.winner
                else f"The best held-out accuracy is {trials.winner}'s; its lead"
            )
            + f" over the runner-up {trials.runner_up} is {_pct(gap.mean)} points "
            f"(95% CI {_pct(gap.ci_low)} to {_pct(gap.ci_high)}, paired on the same "
            f"{gap.n_images} images)."
        )
    change: list[str] = []
    if trials.within_noise:
        reasons += _noise_reasons(trials, pick)
        change.append("More labelled target images, which would separate the leaders.")
        confidence = "low"
    elif gap is not None:
        complete = len(pick.rungs) == len(trials.spend.rung_epochs)
        confidence = "high" if gap.ci_low > 0 and complete else "medium"
        change.append(
            "A runner-up within the interval of the gap: then the cheaper of the two. A larger "
            "--trial-budget carries more candidates to the full epochs."
        )
    else:
        confidence = "low"
    strategy = pick.candidate.strategy
    if prior.strategy != strategy:
        reasons.append(
            f"The rule prior predicted {prior.strategy}; the race measured otherwise, and the "
            "measurement decides."
        )
    else:
        reasons.append(f"The rule prior predicted the same strategy ({prior.strategy}).")
    return reasons, change, confidence


def _measured_reason(trials: RaceRecord) -> str:
    """What was trained, how it was scored, and for what share of the full sweep."""
    frac, protocol = trials.spent_fraction, trials.protocol
    scored = "held-out images"  # a race run without saying how its folds were made
    if protocol is not None:
        plural = "s" if protocol.repeats > 1 else ""
        scored = f"{protocol.kind} on {protocol.n_held_out} held-out images" + (
            f" ({protocol.folds} folds, {protocol.repeats} repeat{plural})"
            if protocol.folds > 1
            else ""
        )
    share = f", for {100 * frac:.0f}% of the full sweep's FLOPs." if frac is not None else "."
    rungs = ", ".join(map(str, trials.spend.rung_epochs))
    return (
        f"Measured: {len(trials.entries)} candidate configurations trained on the target "
        f"in a successive-halving race (rungs of {rungs} epochs), scored by {scored}" + share
    )


def _noise_reasons(trials: RaceRecord, pick: RaceEntry) -> list[str]:
    """The leaders the held-out images cannot separate, and how the pick was broken out."""
    leaders = list(trials.leaders)
    out = [
        f"{len(leaders)} leaders ({_names(leaders)}) are within noise of the winner (each "
        "paired interval includes 0): these held-out images cannot separate them. "
        + _tie_break(trials, pick, trials.tie_tolerance)
    ]
    if trials.worse_by_loss:
        out.append(
            f"{_names(list(trials.worse_by_loss))} tie with the winner on accuracy but their "
            "held-out cross-entropy is higher (paired 95% interval above 0), so the cheaper "
            "of them is not taken."
        )
    return out


def _tie_break(trials: RaceRecord, pick: RaceEntry, tol: float) -> str:
    """Why the pick among the leaders, naming the tie-break actually used."""
    if trials.chosen_by_kind == "cost":
        return (
            f"{pick.key} is within {tol:.3f} of the winner's accuracy, not measurably "
            f"worse in held-out loss, and cheaper (full-run FLOPs more than "
            f"{trials.cost_tie:.0%} below the winner's), so it is recommended."
        )
    return "The winner, the best estimate, is recommended: " + (
        f"the leaders tied with it in accuracy cost the same (full-run FLOPs within "
        f"{trials.cost_tie:.0%}), which is a tie, not cheaper."
        if len(trials.tied) > 1
        else f"no cheaper leader is within {tol:.3f} of its accuracy without a measurably "
        "higher held-out loss."
    )
