"""A budgeted trial race: successive halving over candidate adaptations, trained for real.

Every candidate (:mod:`diagnose.decide.candidates`) trains on the target with the
same engine as ``diagnose compare`` (:class:`diagnose.training.strategy_run.StrategyRun`:
features cached once for heads, the frozen prefix cached for ``partial``) and
is scored on held-out target images by the accuracy of its *last-epoch*
weights (the best epoch of a noisy score over many evaluations would favour
whoever is evaluated most often). Successive halving (Jamieson & Talwalkar
2016): every candidate gets a short budget, the best ``1/ETA`` continue with
``ETA`` times more epochs, and so on up to the full epochs, as long as the
next rung fits in the FLOPs budget (a fraction of the full sweep: every
candidate at the full epochs under the same folds).

Scores are honest at small N: a val split under :data:`SMALL_VAL` images
resolves nothing finer than about +-10 points, so then the race scores by
repeated stratified k-fold over train+val. The test split is never used.
The winner's lead is a paired comparison on the same images: an interval on
the per-image accuracy gap to the runner-up. Leaders within noise are named;
a cheaper one replaces the winner only when it is also tied in practice
(:mod:`diagnose.decide.race_verdict`).

Example:
    >>> folds, protocol = scoring_folds(y, split["train"], split["val"], seed=0)
    >>> trials = run_race(cands, folds, x, y, 10, model=net, head="fc", blocks=blocks,
    ...                   full_epochs=15, budget=0.2, batch_size=64, seed=0,
    ...                   device=torch.device("cpu"))
    >>> trials["winner"], trials["flops_spent"] / trials["full_flops_estimate"]
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from torch import nn

from diagnose.decide.candidates import LR_GRID, Candidate
from diagnose.decide.race_scoring import Fold
from diagnose.decide.race_trials import Arm, RaceContext
from diagnose.decide.race_verdict import race_summary
from diagnose.training import TargetData, steps_per_epoch

__all__ = [
    "EDGE_STEP",
    "ETA",
    "MAX_RUNGS",
    "MIN_RUNG_STEPS",
    "edge_extensions",
    "run_race",
    "rung_epochs",
]

# Successive halving keeps the best 1/ETA of each rung and gives them ETA times
# the epochs (Jamieson & Talwalkar 2016 use 2-4; 3 leaves three rungs between
# 2 and 15 epochs, the typical range here).
ETA = 3
MAX_RUNGS = 4
# The factor beyond a grid's winning edge: the grid's own spacing.
EDGE_STEP = LR_GRID[1] / LR_GRID[0]
# A rung shorter than this many optimiser steps is a cosine run that barely leaves its
# initialisation: at 1 epoch (2 steps) every fine-tuned candidate sat at chance on a
# 200-image demo target while feature extraction's 50 head epochs did not.
MIN_RUNG_STEPS = 20


def rung_epochs(full_epochs: int, eta: int = ETA, min_epochs: int = 1) -> list[int]:
    """Epochs of each rung, ending at ``full_epochs``, none below ``min_epochs``.

    ``rung_epochs(15) == [2, 5, 15]``; ``rung_epochs(18, min_epochs=4) == [6, 18]``.
    """
    if full_epochs < 1:
        raise ValueError(f"The 'full_epochs' parameter must be >= 1. Got {full_epochs!r} instead.")
    floor = max(1, min(int(min_epochs), full_epochs))
    rungs = min(MAX_RUNGS, 1 + int(math.log(full_epochs / floor) / math.log(eta) + 1e-9))
    out = [max(floor, round(full_epochs / eta ** (rungs - 1 - r))) for r in range(rungs)]
    return sorted(set(out))


def _survivors(alive: list[Arm], keep: int) -> list[Arm]:
    """The best ``keep`` of ``alive`` (ranked), the best LR of each strategy and depth first.

    Two LRs of one arm are nearly one bet; carrying the best of several arms
    hedges against an arm that starts slow (the reason Hyperband runs brackets).
    """
    firsts, rest, seen = [], [], set()
    for a in alive:
        (rest if a.cand.arm in seen else firsts).append(a)
        seen.add(a.cand.arm)
    chosen = (firsts + rest)[:keep]
    return [a for a in alive if a in chosen]


def run_race(
    candidates: list[Candidate],
    folds: list[Fold],
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    model: nn.Module,
    head: str,
    blocks: list[str],
    full_epochs: int,
    budget: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: bool = True,
    warnings: list[str] | None = None,
) -> dict:
    """Race ``candidates`` by successive halving under ``budget`` x the full sweep's FLOPs.

    ``x``/``y`` are the labelled pool the folds index (preprocessed images,
    int64 labels). Rung 0 always runs (it is what estimates every
    candidate's cost); a later rung runs only for as many of the best as its
    estimated FLOPs fit in what is left, so the spend stays within the budget
    or, when rung 0 alone exceeds it, within one rung. Returns the ``trials``
    dict of results.json (see :func:`diagnose.decide.measured.measured_recommendation`).
    """
    from tqdm.auto import tqdm

    if not candidates:
        raise ValueError("The 'candidates' parameter of run_race is empty: nothing to race.")
    if not 0 < budget <= 1:
        raise ValueError(f"The 'budget' parameter must be in (0, 1]. Got {budget!r} instead.")
    start = time.perf_counter()
    fold_data = [
        TargetData(
            x[f.train],
            y[f.train],
            x[f.held_out],
            y[f.held_out],
            x[f.held_out][:1],
            y[f.held_out][:1],
            num_classes,
        )
        for f in folds
    ]
    n_folds = len(folds)
    # Rung 0 scores on the first 1/ETA of the folds: cheap enough for every candidate and
    # enough to drop the clearly worse 2/3. Later rungs score on more folds as the budget
    # allows (every fold when it does), so the finalists are compared on the most images.
    first_folds = max(1, math.ceil(n_folds / ETA)) if n_folds > 1 else 1
    steps = max(1, steps_per_epoch(len(folds[0].train), batch_size))
    epochs = rung_epochs(full_epochs, min_epochs=math.ceil(MIN_RUNG_STEPS / steps))
    arms = [Arm(i, c) for i, c in enumerate(candidates)]
    # Head inputs and frozen-prefix outputs per fold are shared by the candidates in ``ctx``
    # (their FLOPs are counted once, where they ran).
    ctx = RaceContext(fold_data, folds, model, head, blocks, batch_size, seed, device, {}, warnings)
    alive = list(arms)
    rung_log: list[dict] = []
    spent, full_estimate, budget_flops = 0, None, None
    for r, e in enumerate(epochs):
        if r > 0:
            alive.sort(key=Arm.rank_key)
            alive = [a for a in alive if a.status == "ok"]
            keep = max(2, math.ceil(len(alive) / ETA)) if len(alive) >= 2 else len(alive)
            keep, rung_folds = _fit_rung(alive, keep, e, spent, budget_flops, first_folds, n_folds)
            if keep < 2:
                break
            survivors = _survivors(alive, keep)
            for a in alive:
                if a in survivors:
                    continue
                a.eliminated_at = r - 1
                a.reason = (
                    f"not among the {keep} carried on of {len(alive)} after {epochs[r - 1]} "
                    "epochs (ranked by held-out accuracy, the best LR of each strategy first)"
                )
            alive = survivors
        if r == 0:
            rung_folds = first_folds
        bar = tqdm(
            total=len(alive) * rung_folds,
            desc=f"race rung {r + 1}/{len(epochs)} ({e} epochs)",
            unit="trial",
            disable=not progress,
            leave=False,
        )
        rung_flops = sum(ctx.run_arm(a, bar, e=e, r=r, n_folds=rung_folds) for a in alive)
        if r == 0:
            # A grid whose best LR is on its edge has not bracketed the optimum: one more
            # point beyond that edge, for that strategy and depth, at rung 0's cost.
            extra = edge_extensions(arms)
            if extra:
                bar.total += len(extra) * rung_folds
                bar.refresh()
                arms += extra
                alive += extra
                rung_flops += sum(ctx.run_arm(a, bar, e=e, r=r, n_folds=rung_folds) for a in extra)
        bar.close()
        spent += rung_flops
        rung_log.append(
            {"rung": r, "epochs": int(e), "candidates": len(alive), "flops": rung_flops}
        )
        if r == 0:
            full_estimate = sum(
                a.estimate(epochs[-1], n_folds) for a in arms if a.status != "failed"
            )
            budget_flops = budget * full_estimate
    ranked = sorted(arms, key=lambda a: (-(len(a.rungs)),) + a.rank_key())
    schedule = {"rungs": rung_log, "rung_epochs": list(epochs), "eta": ETA}
    spend = {
        "flops_spent": int(spent),
        "full_flops_estimate": None if full_estimate is None else float(full_estimate),
        "budget": float(budget),
        "budget_flops": None if budget_flops is None else float(budget_flops),
        "wall_s": round(time.perf_counter() - start, 4),
    }
    return race_summary(arms, ranked, schedule, spend, n_folds=n_folds, full_epochs=full_epochs)


def edge_extensions(arms: list[Arm]) -> list[Arm]:
    """One new arm per strategy and depth whose best rung-0 LR is the top or bottom of its grid.

    The new LR is :data:`EDGE_STEP` times beyond that edge. An arm whose grid has a
    single LR, or whose best is inside its grid, gets none; the extension runs once
    (its own result is not extended again), so it costs at most one rung-0 trial per arm.
    """
    by_arm: dict[str, list[Arm]] = {}
    for a in arms:
        by_arm.setdefault(a.cand.arm, []).append(a)
    out: list[Arm] = []
    for group in by_arm.values():
        finished = [a for a in group if a.status == "ok" and a.correct is not None]
        lrs = sorted({a.cand.head_lr for a in group})
        if len(lrs) < 2 or not finished:
            continue
        best = min(finished, key=Arm.rank_key)
        if best.cand.head_lr == lrs[-1]:
            lr = lrs[-1] * EDGE_STEP
        elif best.cand.head_lr == lrs[0]:
            lr = lrs[0] / EDGE_STEP
        else:
            continue
        cand = replace(best.cand, head_lr=float(f"{lr:.3g}"), lr_edge=True)
        out.append(Arm(len(arms) + len(out), cand))
    return out


def _fit_rung(alive, keep, epochs, spent, budget_flops, min_folds, n_folds) -> tuple[int, int]:
    """(survivors, folds) of the next rung that fit the budget: folds give way first
    (down to rung 0's), then survivors (down to 2; fewer means the race stops)."""
    while keep >= 2:
        chosen = _survivors(alive, keep)
        for folds in range(n_folds, min_folds - 1, -1):
            if spent + sum(a.estimate(epochs, folds) for a in chosen) <= budget_flops:
                return keep, folds
        keep -= 1
    return keep, min_folds
