"""The race's verdict: the winner, the leaders within noise, the pick, the record.

The winner is the best held-out accuracy. Leaders whose paired interval on the
gap to it includes 0 are *within noise*: the held-out images cannot separate
them, and the report says so. Within noise is not the same as equal, though:
at 10 labels per class nearly everything is within noise, and taking the
cheapest leader there recommended feature extraction 9.8 points below the
best configuration on a real case (EfficientNet-Lite0 ImageNet -> MNIST,
``benchmarks/bench_recommend_real.py``). So a cheaper leader replaces the
winner only when it is also *tied* in practice: its measured accuracy within
:data:`TIE_TOLERANCE` of the winner's, the same tolerance the comparison's
selection (:mod:`diagnose.decide.select`) uses, AND its held-out cross-entropy
not measurably worse (the paired 95% interval on the per-image loss gap
includes 0 or favours it). Near the ceiling accuracy stops separating
candidates (three finalists at 78 of 80 images on a real case), and the loss,
a proper scoring rule, can still separate them. On the real-case runs of
``benchmarks/recommend_real_results.json`` it separated none of the exact
accuracy ties on ResNet-10 -> digits (the cheapest was taken, 1.0-1.2 points
below the oracle's best over 5 seeds, within the oracle's own seed spread):
the held-out set, not the rule, is the limit there.
"""

from __future__ import annotations

from diagnose.decide.race_scoring import paired_gap
from diagnose.decide.select import DEFAULT_TIE_TOLERANCE, FLOAT_SLACK

# A leader this close to the winner's accuracy (fraction) is tied with it: the cheaper wins.
TIE_TOLERANCE = DEFAULT_TIE_TOLERANCE
# Full-run FLOPs within this fraction of each other are a tie in cost: the cost model and
# FlopCounterMode agree to a few percent (the race calibrates one on the other), so a
# smaller difference is not "cheaper", and the winner, the best estimate, stays. (Breaking
# such ties by the rule prior instead cost 5.7 points on a real case: LP-FT taken over a
# full fine-tuning winner of the same accuracy, cost and a lower held-out loss.)
COST_TIE = 0.05
# How the pick was chosen among the leaders (results.json's ``chosen_by_kind``).
CHOSEN_BY = ("accuracy", "cost")

__all__ = [
    "CHOSEN_BY",
    "COST_TIE",
    "TIE_TOLERANCE",
    "choose_pick",
    "paired_arms",
    "paired_loss",
    "race_summary",
]


def paired_arms(a, b) -> dict:
    """The paired gap (:func:`paired_gap`) between two arms' per-image correctness."""
    # Both score the same folds in the same order, one rung possibly on fewer of them:
    # pair the entries they share (a prefix of the longer one).
    n = min(len(a.correct), len(b.correct))
    return paired_gap(a.correct[:n], b.correct[:n], a.ids[:n])


def paired_loss(a, b) -> dict:
    """The paired gap of ``b``'s per-image held-out cross-entropy over ``a``'s (positive:
    ``b`` is worse), with its 95% interval."""
    n = min(len(a.loss), len(b.loss))
    return paired_gap(b.loss[:n], a.loss[:n], a.ids[:n])


def race_summary(
    arms: list, ranked: list, schedule: dict, spend: dict, *, n_folds: int, full_epochs: int
) -> dict:
    """The race's record and verdict (``recommendation["trials"]`` in results.json).

    ``arms`` are the race's candidates in candidate order and ``ranked`` the same
    best first; ``schedule`` holds ``rungs``, ``rung_epochs`` and ``eta``, and
    ``spend`` the FLOPs and seconds spent against the budget. The winner is the
    best-ranked finished candidate; the *leaders* are it and every finalist whose
    paired 95% interval on the gap to it includes 0; the *tied* are the leaders
    within :data:`TIE_TOLERANCE` of its accuracy whose held-out loss is not
    measurably worse (``loss_gap_to_winner``; the others within that tolerance are
    ``worse_by_loss``), and the *pick* is the cheapest of those when it costs more
    than :data:`COST_TIE` less than the winner at the full epochs, else the winner
    (:func:`choose_pick`).
    Every finalist's entry holds its ``gap_to_winner``.
    """
    ok = [a for a in ranked if a.status == "ok" and a.correct is not None]
    winner = ok[0] if ok else None
    top_rung = len(winner.rungs) if winner else 0
    leaders, tied, gap, runner, gaps, loss_gaps = [], [], None, None, {}, {}
    worse_by_loss: list = []
    if winner is not None:
        finalists = [a for a in ok if len(a.rungs) == top_rung]
        others = [a for a in ok if a is not winner]
        runner = others[0] if others else None
        if runner is not None:
            gap = paired_arms(winner, runner)
        gaps = {id(a): paired_arms(winner, a) for a in finalists if a is not winner}
        leaders = [winner] + [a for a in finalists if id(a) in gaps and gaps[id(a)]["ci_low"] <= 0]
        loss_gaps = {id(a): paired_loss(winner, a) for a in finalists if a is not winner}
        close = [a for a in leaders[1:] if gaps[id(a)]["mean"] <= TIE_TOLERANCE + FLOAT_SLACK]
        worse_by_loss = [a for a in close if loss_gaps[id(a)]["ci_low"] > 0]
        tied = [winner] + [a for a in close if a not in worse_by_loss]
    pick, kind = choose_pick(winner, tied, full_epochs, n_folds) if tied else (None, None)
    for a in arms:
        if a.status == "ok" and a.eliminated_at is None and a is not winner and a.reason is None:
            a.reason = f"reached the last rung ({a.rungs[-1]['epochs']} epochs) below the winner"
    return {
        "candidates": [
            {
                **a.cand.to_dict(),
                "rungs": a.rungs,
                "flops": int(a.flops),
                "wall_s": round(a.wall, 4),
                "full_run_flops_estimate": a.estimate(full_epochs, n_folds) if a.rungs else None,
                "status": a.status,
                "eliminated_at": a.eliminated_at,
                "reason": a.reason,
                "gap_to_winner": gaps.get(id(a)),
                "loss_gap_to_winner": loss_gaps.get(id(a)),
            }
            for a in arms
        ],
        **schedule,
        **spend,
        "winner": None if winner is None else winner.cand.key,
        "runner_up": None if runner is None else runner.cand.key,
        "gap": gap,
        "leaders": [a.cand.key for a in leaders],
        "within_noise": bool(len(leaders) > 1),
        "tied": [a.cand.key for a in tied],
        "worse_by_loss": [a.cand.key for a in worse_by_loss],
        "tie_tolerance": TIE_TOLERANCE,
        "pick": None if pick is None else pick.cand.key,
        "chosen_by_kind": kind,
        "chosen_by": None if kind is None else _CHOSEN_WORDS[kind],
        "cost_tie": COST_TIE,
    }


_CHOSEN_WORDS = {
    "accuracy": "accuracy",
    "cost": f"the lowest cost among candidates within {TIE_TOLERANCE} of the winner's accuracy "
    "and not measurably worse in held-out loss",
}


def choose_pick(winner, tied: list, full_epochs: int, n_folds: int) -> tuple:
    """``(pick, kind)`` among the ``tied`` leaders (the winner first); kind in :data:`CHOSEN_BY`.

    A leader "cheaper" than the winner costs more than :data:`COST_TIE` less at the full
    epochs; the cheapest of those is picked (costs within :data:`COST_TIE` of it are
    equal, the rule prior's order breaking that tie). With none cheaper the winner stays.
    """
    cost = {id(a): a.estimate(full_epochs, n_folds) for a in tied}
    by_prior = lambda a: (a.cand.prior_rank, a.index)  # noqa: E731
    cheaper = [a for a in tied if cost[id(a)] < cost[id(winner)] * (1 - COST_TIE)]
    if cheaper:
        cheapest = min(cost[id(a)] for a in cheaper)
        return min(
            (a for a in cheaper if cost[id(a)] <= cheapest * (1 + COST_TIE)), key=by_prior
        ), "cost"
    return winner, "accuracy"
