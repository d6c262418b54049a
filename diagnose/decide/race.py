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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diagnose.decide.candidates import Candidate
from diagnose.decide.race_scoring import Fold
from diagnose.decide.race_verdict import race_summary
from diagnose.training import StrategyRun, TargetData, steps_per_epoch

__all__ = [
    "ETA",
    "FIXED_PHASES",
    "MAX_RUNGS",
    "MIN_RUNG_STEPS",
    "run_race",
    "rung_epochs",
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
# Phases whose cost does not grow with the epochs of the main stage: the captures,
# the prefix cache and the head stages on cached features (max(epochs, lp_epochs)).
FIXED_PHASES = ("capture", "prefix_cache", "head", "linear_probe")


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


def _survivors(alive: list[_Arm], keep: int) -> list[_Arm]:
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


def _flops(phases) -> tuple[int, int]:
    """(fixed, epoch-scaled) FLOPs of a run's phases."""
    fixed = scaled = 0
    for ph in phases:
        if ph.flops_per_step is None:
            continue
        f = int(ph.flops_per_step) * int(ph.steps)
        if ph.name in FIXED_PHASES:
            fixed += f
        else:
            scaled += f
    return fixed, scaled


def _trial(cand, fold_data, model, head, blocks, epochs, batch_size, seed, device, reuse) -> dict:
    """Train ``cand`` for ``epochs`` on one fold; score its last-epoch weights."""
    start = time.perf_counter()
    config = cand.config(blocks, epochs=epochs, batch_size=batch_size, seed=seed)
    run = StrategyRun(
        cand.strategy,
        model,
        head,
        blocks,
        fold_data,
        None,
        config,
        device,
        progress=False,
        reuse=reuse,
    )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            run.build()
            run.train()
            logits = run.predict(fold_data.x_val)
    finally:
        run.bar.close()
    y = fold_data.y_val
    loss = F.cross_entropy(logits, y, reduction="none").double().numpy()
    correct = (logits.argmax(1) == y).numpy()
    fixed, scaled = _flops(run.phases)
    ok = run.diverged is None and bool(np.isfinite(loss).all())
    return {
        "correct": correct if ok else np.zeros_like(correct),
        "loss": loss if ok else np.full_like(loss, np.inf),
        "fixed_flops": fixed,
        "scaled_flops": scaled,
        "wall_s": time.perf_counter() - start,
        "diverged": None if ok else (run.diverged or {"loss": "non-finite validation loss"}),
    }


class _Arm:
    """A candidate's record across rungs."""

    def __init__(self, index: int, cand: Candidate):
        self.index, self.cand = index, cand
        self.rungs: list[dict] = []
        self.correct = self.loss = None
        self.fixed = self.per_epoch = 0.0  # FLOPs per fold, from its latest rung
        self.ids = None  # the held-out image of each entry of ``correct``
        self.flops = 0
        self.wall = 0.0
        self.status, self.reason, self.eliminated_at = "ok", None, None

    def estimate(self, epochs: int, folds: int) -> float:
        return (self.fixed + self.per_epoch * epochs) * folds

    def rank_key(self) -> tuple:
        if self.status != "ok":
            return (1, 0.0, 0.0, self.cand.prior_rank, self.index)
        return (
            0,
            -float(self.correct.mean()),
            float(self.loss.mean()),
            self.cand.prior_rank,
            self.index,
        )


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
    arms = [_Arm(i, c) for i, c in enumerate(candidates)]
    # Head inputs and frozen-prefix outputs per fold, computed by the first candidate that
    # needs them and reused by the rest (their FLOPs are counted once, where they ran).
    reuse: dict = {}
    alive = list(arms)
    rung_log: list[dict] = []
    spent, full_estimate, budget_flops = 0, None, None
    for r, e in enumerate(epochs):
        if r > 0:
            alive.sort(key=_Arm.rank_key)
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
        rung_flops = 0
        for a in alive:
            outs = []
            try:
                for fd in fold_data[:rung_folds]:
                    outs.append(
                        _trial(a.cand, fd, model, head, blocks, e, batch_size, seed, device, reuse)
                    )
                    bar.update(1)
            except (RuntimeError, ValueError) as exc:  # one failing candidate never ends the race
                a.status, a.eliminated_at = "failed", r
                a.reason = (
                    f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
                if warnings is not None:
                    warnings.append(f"Race candidate {a.cand.key} {a.reason}")
                bar.update(rung_folds - len(outs))
                continue
            a.correct = np.concatenate([o["correct"] for o in outs])
            a.loss = np.concatenate([o["loss"] for o in outs])
            fixed = sum(o["fixed_flops"] for o in outs)
            scaled = sum(o["scaled_flops"] for o in outs)
            a.fixed, a.per_epoch = fixed / len(outs), scaled / e / len(outs)
            a.ids = np.concatenate([f.held_out for f in folds[: len(outs)]])
            a.flops += fixed + scaled
            rung_flops += fixed + scaled
            wall = sum(o["wall_s"] for o in outs)
            a.wall += wall
            bad = next((o["diverged"] for o in outs if o["diverged"]), None)
            if bad is not None:
                a.status, a.eliminated_at = "diverged", r
                a.reason = f"diverged ({bad.get('loss')}) after at most {e} epochs"
            a.rungs.append(
                {
                    "rung": r,
                    "epochs": int(e),
                    "val_accuracy": float(a.correct.mean()),
                    "val_loss": float(a.loss.mean()) if np.isfinite(a.loss).all() else None,
                    "fold_accuracy": [float(o["correct"].mean()) for o in outs],
                    "folds": len(outs),
                    "flops": int(fixed + scaled),
                    "wall_s": round(wall, 4),
                }
            )
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
