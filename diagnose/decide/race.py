"""A budgeted trial race: successive halving over candidate adaptations, trained for real.

Every candidate (:mod:`diagnose.decide.candidates`) trains on the target with the
same engine as ``diagnose compare`` (:class:`diagnose.training.strategy_run.StrategyRun`
in its trial mode: features cached once for heads, the frozen prefix cached for
``partial``, nothing measured per epoch) and is scored on held-out target images
by the accuracy of its *last-epoch* weights (the best epoch of a noisy score
over many evaluations would favour whoever is evaluated most often). Successive
halving (Jamieson & Talwalkar 2016): every candidate gets a short budget, the
best ``1/ETA`` continue with ``ETA`` times more epochs, and so on up to the full
epochs, as long as the next rung fits in the FLOPs budget (a fraction of the
full sweep: every candidate at the full epochs under the same folds).

The budget is kept on every target, the first rung included: the race is sized
before it trains (:mod:`diagnose.decide.race_budget`), and every cut is recorded.
A strategy whose best LR is on the edge of its grid gets LRs past that edge
until its accuracy turns down, within the budget; one still climbing when the
budget or :data:`MAX_EDGE_STEPS` stops it is listed as ``unbracketed``.

Scores are honest at small N: a val split under :data:`SMALL_VAL` images
resolves nothing finer than about +-10 points, so then the race scores by
repeated stratified k-fold over train+val. The test split is never used.
The winner's lead is a paired comparison on the same images: an interval on
the per-image accuracy gap to the runner-up. Leaders within noise are named;
a cheaper one replaces the winner only when it is also tied in practice
(:func:`choose_pick`, below).

Example:
    >>> folds, protocol = scoring_folds(y, split["train"], split["val"], seed=0)
    >>> trials = run_race(cands, folds, x, y, 10, model=net, head="fc", blocks=blocks,
    ...                   full_epochs=15, budget=0.2, batch_size=64, seed=0,
    ...                   device=torch.device("cpu"))
    >>> trials.winner, trials.spent_fraction
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from diagnose.decide.candidates import Candidate
from diagnose.decide.race_budget import (
    CostModel,
    Cut,
    Ledger,
    RacePlan,
    TrialSizes,
    plan_race,
)
from diagnose.decide.race_lr import (
    MAX_EDGE_STEPS,
    LRGrids,
    edge_extensions,
    finetune_grid,
    unbracketed,
    unstable_arms,
)
from diagnose.decide.race_record import (
    PairedGap,
    RaceEntry,
    RaceRecord,
    RaceSpend,
    RungLog,
    ScoringProtocol,
)
from diagnose.decide.race_scoring import Fold, paired_gap
from diagnose.decide.race_trials import Arm, RaceContext
from diagnose.decide.select import COST_TIE, DEFAULT_TIE_TOLERANCE, FLOAT_SLACK, cost_tie
from diagnose.models import choose_layout
from diagnose.training import TargetData, import_ray, steps_per_epoch

__all__ = [
    "choose_pick",
    "CHOSEN_BY",
    "ETA",
    "MAX_RUNGS",
    "MIN_RUNG_STEPS",
    "paired_arms",
    "paired_loss",
    "race_summary",
    "run_race",
    "rung_epochs",
    "TIE_TOLERANCE",
]

# Successive halving keeps the best 1/ETA of each rung and gives them ETA times
# the epochs (Jamieson & Talwalkar 2016 use 2-4; 3 leaves three rungs between
# 2 and 15 epochs, the typical range here).
ETA = 3
MAX_RUNGS = 4
# A rung shorter than this many optimiser steps is a cosine run that barely leaves its
# initialisation: at 1 epoch (2 steps) every fine-tuned candidate sat at chance on a
# 200-image demo target while feature extraction's 50 head epochs did not.
MIN_RUNG_STEPS = 20
# A leader this close to the winner's accuracy (fraction) is tied with it: the cheaper wins.
TIE_TOLERANCE = DEFAULT_TIE_TOLERANCE
# How the pick was chosen among the leaders (results.json's ``chosen_by_kind``).
CHOSEN_BY = ("accuracy", "cost")


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
    executor: str = "local",
    ray_address: str | None = None,
    meter: Any = None,
    protocol: ScoringProtocol | None = None,
) -> RaceRecord:
    """Race ``candidates`` by successive halving within ``budget`` x the full sweep's FLOPs.

    ``x``/``y`` are the labelled pool the folds index (preprocessed images,
    int64 labels). Before it trains, the race is fitted to the budget
    (:func:`diagnose.decide.race_budget.plan_race`: fewer folds, a shorter first rung,
    fewer LRs, fewer candidates, each cut recorded); while it runs, no trial starts
    that the calibrated cost model says would pass the budget, so ``flops_spent <=
    budget x full_flops_estimate`` on every target. With ``executor="ray"`` each
    rung's trials run as Ray tasks (:mod:`diagnose.decide.race_ray`; ``ray_address``
    joins a cluster), with the same candidates and scores. With a forgetting ``meter``
    (:class:`diagnose.measure.ForgettingMeter` of the source images) every trial at the
    full epochs also measures what it forgot (each rung's ``agreement`` and
    ``source_accuracy``): the race's learning-forgetting front. ``protocol`` (from
    :func:`~diagnose.decide.race_scoring.scoring_folds`) says how ``folds`` were made, for
    the record. Returns the race's
    :class:`~diagnose.decide.race_record.RaceRecord` (results.json's ``trials`` is its
    ``to_dict()``).
    """
    if not candidates:
        raise ValueError("The 'candidates' parameter of run_race is empty: nothing to race.")
    if not 0 < budget <= 1:
        raise ValueError(f"The 'budget' parameter must be in (0, 1]. Got {budget!r} instead.")
    start = time.perf_counter()
    n_folds = len(folds)
    steps = max(1, steps_per_epoch(len(folds[0].train), batch_size))
    min_epochs = min(full_epochs, math.ceil(MIN_RUNG_STEPS / steps))
    cost = CostModel.measure(model, blocks, x[:1].to(device), model.get_submodule(head).in_features)
    n_train, n_val = len(folds[0].train), len(folds[0].held_out)
    sizes = TrialSizes(cost, list(blocks), n_train, n_val, num_classes)
    candidates, grids = finetune_grid(
        candidates, model=model, head=head, x=x, y=y, classes=num_classes,
        train_idx=folds[0].train, cost=cost, budget=budget, batch_size=batch_size, seed=seed,
        full_estimate=sizes.sweep(candidates, full_epochs, n_folds), device=device,
        progress=progress,
    )  # fmt: skip
    plan = plan_race(
        candidates, cost, blocks=blocks, n_train=n_train, n_val=n_val, classes=num_classes,
        n_folds=n_folds,
        # Rung 0 scores on the first 1/ETA of the folds: enough to drop the clearly worse
        # 2/3. Later rungs score on more folds as the budget allows.
        first_folds=max(1, math.ceil(n_folds / ETA)),
        epochs=rung_epochs(full_epochs, min_epochs=min_epochs), min_epochs=min_epochs,
        budget=budget, spent=grids.flops,
    )  # fmt: skip
    # Head inputs and frozen-prefix outputs per fold are shared by the candidates in ``ctx``
    # (their FLOPs are counted once, where they ran).
    first = folds[0].train[:batch_size]
    layout = choose_layout(model, x[first], device, training=True)
    ctx = RaceContext(
        _fold_data(folds, x, y, num_classes), folds, model, head, blocks, batch_size, seed,
        device, {}, warnings, memory_format=layout.name, meter=meter,
        measure_at=plan.epochs[-1] if meter is not None else None,
    )  # fmt: skip
    ray = import_ray(executor, warnings if warnings is not None else [], progress)
    arms, rung_log, full = _raced(ctx, plan, float(budget), grids, ray, ray_address, progress)
    ranked = sorted(arms, key=lambda a: (-(len(a.rungs)),) + a.rank_key())
    spend = RaceSpend(
        rungs=tuple(rung_log),
        rung_epochs=tuple(plan.epochs),
        eta=ETA,
        flops_spent=int(grids.flops + sum(r.flops for r in rung_log)),
        full_flops_estimate=float(full),
        full_flops_prior_estimate=float(plan.full_estimate),
        budget=float(budget),
        cuts=tuple(plan.cuts),
        lr_grids=grids,
        memory_format=layout.to_dict(),
        unbracketed=tuple(unbracketed(arms)),
        unstable=tuple(unstable_arms(arms)),
        executor="ray" if ray is not None else "local",
        flops_discarded=float(ctx.discarded),
        wall_s=round(time.perf_counter() - start, 4),
    )
    return race_summary(
        arms, ranked, spend, n_folds=n_folds, full_epochs=full_epochs, protocol=protocol
    )


def _raced(ctx: RaceContext, plan: RacePlan, budget: float, grids: LRGrids, ray, address, progress):
    """:func:`_rungs`, its trials as Ray tasks when ``ray`` is given (the cluster at
    ``address``); trials Ray ran that the budget then refused are discarded and said."""
    if ray is not None:
        from diagnose.decide.race_ray import RayTrials

        ctx.remote = RayTrials(ray, ctx, address, progress)
    try:
        out = _rungs(ctx, plan, budget, grids, progress)
    finally:
        if ctx.remote is not None:
            ctx.remote.close()
    if ctx.discarded and ctx.warnings is not None:
        ctx.warnings.append(
            f"The Ray race ran {ctx.discarded / 1e9:.1f} GFLOPs of trials in parallel that the "
            "budget check then refused; they are discarded so that the race records what the "
            "local race would (trials.flops_discarded)."
        )
    return out


def _rungs(ctx: RaceContext, plan: RacePlan, budget: float, grids: LRGrids, progress: bool):
    """Every rung of the race: ``(arms, rung log, the calibrated full-sweep FLOPs)``; the
    network's range test (``grids.flops``) is spent before the first rung."""
    n_folds = len(ctx.folds)
    ledger = Ledger(plan, budget, spent=grids.flops)
    arms = [Arm(i, c) for i, c in enumerate(plan.candidates)]
    arms, rung_log = _first_rung(ctx, arms, ledger, progress)
    epochs = plan.epochs
    full = ledger.full(epochs[0], plan.first_folds)
    alive = [a for a in arms if a.rungs or a.status != "ok"]
    for r, e in enumerate(epochs[1:], start=1):
        alive.sort(key=Arm.rank_key)
        alive = [a for a in alive if a.status == "ok"]
        keep = max(2, math.ceil(len(alive) / ETA)) if len(alive) >= 2 else len(alive)
        ratio = ledger.ratio(epochs[0], plan.first_folds)

        def cost(chosen: list[Arm], folds: int, ratio: float = ratio, e: int = e) -> float:
            # Each arm's measured cost, plus the shared results (captures, prefix caches)
            # of folds no trial has paid for yet: an arm's own record lacks them when
            # another arm paid on the folds it ran.
            unpaid: dict = {}
            for a in chosen:
                shared = plan.sizes.shared(a.cand)
                for f in range(folds) if shared else ():
                    if (f, *shared[0]) not in ctx.paid:
                        unpaid[(f, *shared[0])] = shared[1] * ratio
            return sum(a.estimate(e, folds) for a in chosen) + sum(unpaid.values())

        floors = (max(1, math.ceil(n_folds / ETA)), plan.first_folds)
        keep, rung_folds = _fit_rung(
            alive, keep, cost, ledger.spent, budget * full, floors, n_folds
        )
        if keep < 2:
            break
        survivors = _survivors(alive, keep)
        for a in alive:
            if a not in survivors:
                a.eliminated_at = r - 1
                a.reason = (
                    f"not among the {keep} carried on of {len(alive)} after {epochs[r - 1]} "
                    "epochs (ranked by held-out accuracy, the best LR of each strategy first)"
                )
        alive = survivors
        bar = _bar(
            len(alive) * rung_folds, f"race rung {r + 1}/{len(epochs)} ({e} epochs)", progress
        )
        rung_flops = sum(f for _, f in ctx.run_batch(alive, bar, e=e, r=r, n_folds=rung_folds))
        bar.close()
        ledger.spent += rung_flops
        rung_log.append(RungLog(r, int(e), len(alive), rung_flops))
    return arms, rung_log, full


def _fold_data(folds: list[Fold], x: torch.Tensor, y: torch.Tensor, classes: int) -> list:
    return [
        TargetData(
            x[f.train],
            y[f.train],
            x[f.held_out],
            y[f.held_out],
            x[f.held_out][:1],
            y[f.held_out][:1],
            classes,
        )
        for f in folds
    ]


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="trial", disable=not progress, leave=False)


def _first_rung(ctx: RaceContext, arms: list[Arm], ledger: Ledger, progress: bool):
    """Run the first rung within the budget, then extend LR grids whose best is on an edge.

    Returns the arms (extensions included; those the budget left out removed, with a
    cut recorded) and the rung log.
    """
    plan = ledger.plan
    e, folds = plan.epochs[0], plan.first_folds
    bar = _bar(len(arms) * folds, f"race rung 1/{len(plan.epochs)} ({e} epochs)", progress)

    def fits(a: Arm) -> bool:
        return ledger.fits_first(a.cand, e, folds)

    def fits_beside_next_rung(a: Arm) -> bool:
        # An LR past an edge must not take the budget of the next rung: the two best
        # arms at its epochs on the first rung's folds are kept for it.
        best = sorted((b for b in arms if b.status == "ok" and b.rungs), key=Arm.rank_key)[:2]
        nxt = plan.epochs[1] if len(plan.epochs) > 1 else None
        reserve = sum(b.estimate(nxt, folds) for b in best) if nxt and len(best) == 2 else 0.0
        return ledger.fits_first(a.cand, e, folds, reserve)

    ran: list[Arm] = []
    for a, flops in ctx.run_batch(arms, bar, e=e, r=0, n_folds=folds, admit=fits):
        ledger.record_first(a.cand, flops)
        ran.append(a)
    if len(ran) < len(arms):
        plan.cuts.append(
            Cut(
                "candidates",
                len(arms),
                len(ran),
                "the measured cost of the first trials left no budget for these",
                tuple(a.cand.key for a in arms if a not in ran),
            )
        )
    arms = ran
    for _ in range(MAX_EDGE_STEPS):
        extra = edge_extensions(arms)
        bar.total += len(extra) * folds
        bar.refresh()
        fitting = []
        batch = ctx.run_batch(extra, bar, e=e, r=0, n_folds=folds, admit=fits_beside_next_rung)
        for a, flops in batch:
            ledger.record_first(a.cand, flops)
            fitting.append(a)
        for a in extra:
            if a not in fitting:
                plan.cuts.append(
                    Cut(
                        "edge",
                        len(arms),
                        len(arms),
                        "the budget (and the next rung's share of it) stopped extending this "
                        "LR grid past its edge",
                        (a.cand.arm,),
                    )
                )
        arms += fitting
        if not fitting:
            break
    bar.close()
    log = [RungLog(0, int(e), len(arms), ledger.first_measured)]
    return arms, log


def _fit_rung(alive, keep, cost, spent, budget_flops, floors, n_folds) -> tuple[int, int]:
    """(survivors, folds) of the next rung that fit the budget (``cost(arms, folds)``).

    Folds give way first, then survivors (down to 2; fewer: the race stops), with folds
    no fewer than ``floors[0]``; only when no two survivors fit that many does the floor
    fall to ``floors[1]``. Finalists are scored on at least the protocol's first-rung
    folds: at 10 labels per class a finalist scored on a single fold of 40 images won a
    real case by one lucky fold (5.7 points below the oracle's best).

    Why not more folds for fewer finalists: tried on the real cases (finalists on at
    least half the folds), the final then carried one LR per strategy, and at 40 labels
    per class LoRA's best LR after the first rung collapsed to chance at the full epochs
    while its next LR, cut from the final, was the oracle's best (4.5 points lost on one
    seed, none gained on the others).
    """
    for floor in dict.fromkeys(floors):
        k = keep
        while k >= 2:
            chosen = _survivors(alive, k)
            for folds in range(n_folds, floor - 1, -1):
                if spent + cost(chosen, folds) <= budget_flops:
                    return k, folds
            k -= 1
    return 1, floors[-1]


def paired_arms(a, b) -> PairedGap:
    """The paired gap (:func:`paired_gap`) between two arms' per-image correctness."""
    # Both score the same folds in the same order, one rung possibly on fewer of them:
    # pair the entries they share (a prefix of the longer one).
    n = min(len(a.correct), len(b.correct))
    return paired_gap(a.correct[:n], b.correct[:n], a.ids[:n])


def paired_loss(a, b) -> PairedGap:
    """The paired gap of ``b``'s per-image held-out cross-entropy over ``a``'s (positive:
    ``b`` is worse), with its 95% interval."""
    n = min(len(a.loss), len(b.loss))
    return paired_gap(b.loss[:n], a.loss[:n], a.ids[:n])


def race_summary(
    arms: list,
    ranked: list,
    spend: RaceSpend,
    *,
    n_folds: int,
    full_epochs: int,
    protocol: ScoringProtocol | None = None,
) -> RaceRecord:
    """The race's record and verdict (results.json's ``recommendation.trials``).

    ``arms`` are the race's candidates in candidate order and ``ranked`` the same
    best first; ``spend`` what the race ran and spent against its budget, ``protocol``
    how its folds were made. The
    winner is the best-ranked finished candidate; the *leaders* are it and every
    finalist whose paired 95% interval on the gap to it includes 0; the *tied* are
    the leaders within :data:`TIE_TOLERANCE` of its accuracy whose held-out loss is
    not measurably worse (``loss_gap_to_winner``; the others within that tolerance
    are ``worse_by_loss``), and the *pick* is the cheapest of those when it costs
    more than :data:`COST_TIE` less than the winner at the full epochs, else the
    winner (:func:`choose_pick`). Every finalist's entry holds its ``gap_to_winner``.
    """
    ok = [a for a in ranked if a.status == "ok" and a.correct is not None]
    winner = ok[0] if ok else None
    leaders, tied, gap, runner, gaps, loss_gaps = [], [], None, None, {}, {}
    worse_by_loss: list = []
    if winner is not None:
        finalists = [a for a in ok if len(a.rungs) == len(winner.rungs)]
        others = [a for a in ok if a is not winner]
        runner = others[0] if others else None
        if runner is not None:
            gap = paired_arms(winner, runner)
        gaps = {id(a): paired_arms(winner, a) for a in finalists if a is not winner}
        leaders = [winner] + [a for a in finalists if id(a) in gaps and gaps[id(a)].ci_low <= 0]
        loss_gaps = {id(a): paired_loss(winner, a) for a in finalists if a is not winner}
        close = [a for a in leaders[1:] if gaps[id(a)].mean <= TIE_TOLERANCE + FLOAT_SLACK]
        worse_by_loss = [a for a in close if loss_gaps[id(a)].ci_low > 0]
        tied = [winner] + [a for a in close if a not in worse_by_loss]
    pick, kind = choose_pick(winner, tied, full_epochs, n_folds) if tied else (None, None)
    for a in arms:
        if a.status == "ok" and a.eliminated_at is None and a is not winner and a.reason is None:
            a.reason = f"reached the last rung ({a.rungs[-1].epochs} epochs) below the winner"
    entries = tuple(
        RaceEntry(
            candidate=a.cand,
            rungs=tuple(a.rungs),
            flops=int(a.flops),
            wall_s=round(a.wall, 4),
            full_run_flops_estimate=a.estimate(full_epochs, n_folds) if a.rungs else None,
            status=a.status,
            eliminated_at=a.eliminated_at,
            reason=a.reason,
            gap_to_winner=gaps.get(id(a)),
            loss_gap_to_winner=loss_gaps.get(id(a)),
        )
        for a in arms
    )

    def keys(chosen: list) -> tuple[str, ...]:
        return tuple(a.cand.key for a in chosen)

    return RaceRecord(
        entries=entries,
        spend=spend,
        winner=None if winner is None else winner.cand.key,
        runner_up=None if runner is None else runner.cand.key,
        gap=gap,
        leaders=keys(leaders),
        tied=keys(tied),
        worse_by_loss=keys(worse_by_loss),
        pick=None if pick is None else pick.cand.key,
        chosen_by_kind=kind,
        tie_tolerance=TIE_TOLERANCE,
        cost_tie=COST_TIE,
        protocol=protocol,
    )


def choose_pick(winner, tied: list, full_epochs: int, n_folds: int) -> tuple:
    """``(pick, kind)`` among the ``tied`` leaders (the winner first); kind in :data:`CHOSEN_BY`.

    A leader "cheaper" than the winner costs less at the full epochs and is not in a
    :func:`~diagnose.decide.select.cost_tie` with it; the cheapest of those is picked
    (costs in a tie with it are equal, the rule prior's order breaking that tie). With
    none cheaper the winner stays.

    Why a tie is within :data:`~diagnose.decide.select.COST_TIE`: the cost model and
    FlopCounterMode agree to a few percent (the race calibrates one on the other), so a
    smaller difference is not "cheaper", and the winner, the best estimate, stays.
    Breaking such ties by the rule prior instead cost 5.7 points on a real case: LP-FT
    taken over a full fine-tuning winner of the same accuracy, cost and a lower held-out
    loss.

    Why only *tied* leaders: leaders within noise are not equal. At 10 labels per class
    nearly everything is within noise, and taking the cheapest leader there recommended
    feature extraction 9.8 points below the best configuration on a real case
    (EfficientNet-Lite0 ImageNet -> MNIST, ``benchmarks/bench_recommend_real.py``). So a
    cheaper leader replaces the winner only when its accuracy is within
    :data:`TIE_TOLERANCE` of the winner's AND its held-out cross-entropy is not measurably
    worse (the paired 95% interval on the per-image loss gap includes 0 or favours it):
    near the ceiling accuracy stops separating candidates (three finalists at 78 of 80
    images on a real case), and the loss, a proper scoring rule, still can. On the
    real-case runs of ``benchmarks/recommend_real_results.json`` it separated none of the
    exact accuracy ties on ResNet-10 -> digits (the cheapest was taken, 1.0-1.2 points
    below the oracle's best over 5 seeds, within the oracle's own seed spread): the
    held-out set, not the rule, is the limit there.
    """
    cost = {id(a): a.estimate(full_epochs, n_folds) for a in tied}
    by_prior = lambda a: (a.cand.prior_rank, a.index)  # noqa: E731
    w = cost[id(winner)]
    cheaper = [a for a in tied if cost[id(a)] < w and not cost_tie(cost[id(a)], w)]
    if cheaper:
        cheapest = min(cost[id(a)] for a in cheaper)
        return min((a for a in cheaper if cost_tie(cost[id(a)], cheapest)), key=by_prior), "cost"
    return winner, "accuracy"
