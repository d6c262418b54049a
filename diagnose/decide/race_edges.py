"""Bracketing each strategy's LR: a grid whose best LR is on its edge is extended past it.

The race's LR grid (:data:`diagnose.decide.candidates.LR_GRID` around the range
test's suggestion) is a guess. On a real case (EfficientNet-Lite0, 10 labels per
class) two fine-tuning strategies were still climbing at the grid's top LR and
lost to a tuned feature extraction by 4 points. So after the first rung every
strategy and depth whose best LR is the top or bottom of what it tried gets one
more LR past that edge, and again after that one ran, until its accuracy turns
down, at most :data:`MAX_EDGE_STEPS` times and within the budget; a grid still
climbing then is reported as unbracketed.
"""

from __future__ import annotations

from dataclasses import replace

from diagnose.decide.candidates import LR_GRID
from diagnose.decide.race_budget import HEAD_LR_RANGE
from diagnose.decide.race_trials import Arm

__all__ = [
    "EDGE_STEP",
    "MAX_EDGE_STEPS",
    "edge_extensions",
    "unbracketed",
]

# The factor beyond a grid's winning edge: the grid's own spacing.
EDGE_STEP = LR_GRID[1] / LR_GRID[0]
# At most this many steps past an edge (27x beyond it): a grid still climbing there is
# reported as unbracketed rather than extended without end.
MAX_EDGE_STEPS = 3


def _edges(arms: list[Arm]) -> list[tuple[Arm, float]]:
    """``(best arm, next LR)`` for each strategy and depth whose best LR is on its grid's edge."""
    by_arm: dict[str, list[Arm]] = {}
    for a in arms:
        by_arm.setdefault(a.cand.arm, []).append(a)
    out = []
    for group in by_arm.values():
        finished = [a for a in group if a.status == "ok" and a.correct is not None]
        lrs = sorted({a.cand.head_lr for a in group})
        if len(lrs) < 2 or not finished:
            continue
        best = min(finished, key=Arm.rank_key)
        if best.cand.head_lr == lrs[-1]:
            out.append((best, float(f"{lrs[-1] * EDGE_STEP:.3g}")))
        elif best.cand.head_lr == lrs[0]:
            out.append((best, float(f"{lrs[0] / EDGE_STEP:.3g}")))
    return out


def edge_extensions(arms: list[Arm]) -> list[Arm]:
    """One new arm per strategy and depth whose best LR so far is the top or bottom of its grid.

    The new LR is :data:`EDGE_STEP` times beyond that edge, inside
    :data:`diagnose.decide.race_budget.HEAD_LR_RANGE`. Called again after the new arms
    have run, it extends a grid until its accuracy turns down (the best LR is inside);
    an arm whose grid has a single LR gets none.
    """
    lo, hi = HEAD_LR_RANGE
    out: list[Arm] = []
    for best, lr in _edges(arms):
        if lo <= lr <= hi:
            cand = replace(best.cand, head_lr=lr, lr_edge=True)
            out.append(Arm(len(arms) + len(out), cand))
    return out


def unbracketed(arms: list[Arm]) -> list[str]:
    """Strategies and depths whose best LR is still on the edge of the LRs tried."""
    return [best.cand.arm for best, _ in _edges(arms)]
