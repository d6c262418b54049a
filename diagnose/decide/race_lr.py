"""The race's LRs: the fine-tuning strategies' own grid, and each grid bracketed.

The head's range test (:func:`diagnose.measure.lr_find_head`) trains a new linear
head alone on cached features. Fine-tuning also trains the backbone (at
:data:`~diagnose.decide.recipe.BACKBONE_LR_RATIO` of the head's LR), and the LR that
trains both best need not be the head's: on a real case (an EfficientNet-Lite0 at
10 labels per class) partial fine-tuning was still climbing at the top of the
head's grid. So when the race can afford it, it runs the range test on the network
itself (a new head, every backbone parameter at the backbone ratio, the engine's
batches of the first fold's training images) and centres the grid of ``partial``,
``full_low_lr`` and ``discriminative`` on its suggestion. ``lp_ft`` trains its
head alone first, so it stays on the head's grid.

When the test would measure nothing, the fine-tuning strategies race on the head's
grid and ``trials.lr_grids`` says why: under
:data:`~diagnose.measure.lr_find.MIN_DISTINCT_BATCHES` batches one test cycles the same
few images (its suggestion is their noise, and repeating it over the network costs
more than the race can spend), and a test costing more than
:data:`FINETUNE_TEST_SHARE` of the race's budget is not run.

A grid is still a guess, so it is bracketed as the race runs: on the same real
case two fine-tuning strategies were still climbing at the grid's top LR and lost
to a tuned feature extraction by 4 points. After the first rung every strategy and
depth whose best LR is the top or bottom of what it tried gets one more LR past that
edge (:func:`edge_extensions`), and again after that one ran, until its accuracy
turns down, at most :data:`MAX_EDGE_STEPS` times and within the budget; a grid still
climbing then is reported as :func:`unbracketed`.

Example:
    >>> cands, grids = finetune_grid(cands, model=net, head="fc", x=x, y=y, classes=10,
    ...     train_idx=folds[0].train, cost=cost, full_estimate=full, budget=0.2,
    ...     batch_size=32, seed=0, device=torch.device("cpu"), progress=False)
    >>> grids.fine_tuning, grids.source
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from diagnose.decide.candidates import LR_GRID, Candidate, lr_grid
from diagnose.decide.race_budget import HEAD_LR_RANGE, TRAIN_PASSES, CostModel
from diagnose.decide.race_trials import Arm
from diagnose.decide.recipe import BACKBONE_LR_RATIO
from diagnose.measure import LR_TEST_MOMENTUM, MIN_DISTINCT_BATCHES, lr_range_test
from diagnose.models import replace_module

__all__ = [
    "edge_extensions",
    "EDGE_STEP",
    "finetune_grid",
    "FINETUNE_STRATEGIES",
    "FINETUNE_TEST_SHARE",
    "FINETUNE_TEST_STEPS",
    "LRGrids",
    "MAX_EDGE_STEPS",
    "unbracketed",
    "unstable_arms",
]

# The race's strategies that train the backbone from a new head; they get the grid of
# the network's range test.
FINETUNE_STRATEGIES = ("partial", "full_low_lr", "discriminative")
# The range test of the network may take at most this share of the race's FLOPs: the
# rest trains candidates (a test of 60 steps costs about one short trial of full
# fine-tuning on a few hundred images).
FINETUNE_TEST_SHARE = 0.1
# Enough steps for the LR to sweep 1e-6..10 at about 0.12 decades a step: finer than
# the grid's factor of 3 (0.48 decades) that the suggestion centres.
FINETUNE_TEST_STEPS = 60


@dataclass(frozen=True)
class LRGrids:
    """The race's LR grids (head LRs) and where the fine-tuning one came from.

    Attributes:
        head: the head's grid (around the head's range test).
        fine_tuning: the grid of :data:`FINETUNE_STRATEGIES`.
        source: ``"network_range_test"`` or ``"head_grid"`` (the test was not run or
            suggested nothing; ``why`` says which).
        why: one sentence for the report.
        suggested_lr: the network test's suggestion (head LR), when it ran.
        min_loss_lr: the LR of its smoothed loss minimum, when it ran.
        steps: optimiser steps the test took (0 when not run).
        flops: its training FLOPs, estimated by the cost model (steps x batch x three
            passes of the counted forward), charged to the race before its first rung;
            the trials' own FLOPs are then counted as they run.
    """

    head: tuple[float, ...]
    fine_tuning: tuple[float, ...]
    source: str
    why: str
    suggested_lr: float | None = None
    min_loss_lr: float | None = None
    steps: int = 0
    flops: float = 0.0

    def to_dict(self) -> dict:
        """Plain JSON fields."""
        d = asdict(self)
        d["head"], d["fine_tuning"] = list(self.head), list(self.fine_tuning)
        return d


def _regrid(cands: list[Candidate], grid: list[float]) -> list[Candidate]:
    """``cands`` with every fine-tuning arm's LRs replaced by ``grid``, order kept."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for c in cands:
        if c.strategy not in FINETUNE_STRATEGIES:
            out.append(c)
        elif c.arm not in seen:
            seen.add(c.arm)
            out.extend(replace(c, head_lr=lr) for lr in grid)
    return out


def _skip(head: tuple[float, ...], why: str) -> LRGrids:
    return LRGrids(head, head, "head_grid", f"{why}, so fine-tuning raced on the head's grid")


def finetune_grid(
    cands: list[Candidate],
    *,
    model: nn.Module,
    head: str,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    train_idx: np.ndarray,
    cost: CostModel,
    full_estimate: float,
    budget: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: bool,
) -> tuple[list[Candidate], LRGrids]:
    """The candidates with the fine-tuning strategies on their own grid, and the grids.

    Args:
        cands: the race's candidates (every arm on the head's grid).
        model, head: the network the race trains and its head's qualified name.
        x, y: the race's labelled pool (``classes`` classes); ``train_idx`` the positions
            the test may train on.
        cost: the network's :class:`~diagnose.decide.race_budget.CostModel`.
        full_estimate: the full sweep's FLOPs; the test may take
            :data:`FINETUNE_TEST_SHARE` of ``budget`` times it.
        batch_size, seed, device, progress: as for the race.
    """
    tuned = tuple(sorted({c.head_lr for c in cands if c.strategy in FINETUNE_STRATEGIES}))
    head_grid = tuple(sorted({c.head_lr for c in cands if c.strategy not in FINETUNE_STRATEGIES}))
    head_grid = head_grid or tuned  # both come from the head's range test
    if not tuned:
        return cands, LRGrids(head_grid, (), "head_grid", "no fine-tuning candidates")
    n = len(train_idx)
    batches = math.ceil(n / batch_size)
    if batches < MIN_DISTINCT_BATCHES:
        why = (
            f"{n} training images make {batches} batch{'es' if batches > 1 else ''} of "
            f"{batch_size}, under {MIN_DISTINCT_BATCHES}: a range test of the network would "
            "cycle them and measure their noise"
        )
        return cands, _skip(head_grid, why)
    flops = FINETUNE_TEST_STEPS * min(batch_size, n) * TRAIN_PASSES * cost.total
    allowance = FINETUNE_TEST_SHARE * budget * full_estimate
    if flops > allowance:
        why = (
            f"a range test of the network ({flops / 1e9:.3g} GFLOPs) would take more than "
            f"{FINETUNE_TEST_SHARE:.0%} of the race's budget ({allowance / 1e9:.3g} GFLOPs)"
        )
        return cands, _skip(head_grid, why)
    res = _network_range_test(
        model, head, (x, y, classes), train_idx, batch_size, seed, device, progress
    )
    steps = len(res.lrs)
    spent = steps * min(batch_size, n) * TRAIN_PASSES * cost.total
    if res.suggested_lr is None:
        skipped = _skip(head_grid, "the network's range test found no steady descent")
        return cands, replace(skipped, min_loss_lr=res.min_loss_lr, steps=steps, flops=spent)
    grid = tuple(lr_grid(res.suggested_lr))
    why = (
        f"a range test of the network (new head, backbone at {BACKBONE_LR_RATIO:g}x its LR) "
        f"suggested a head LR of {res.suggested_lr:.3g}"
    )
    grids = LRGrids(
        head_grid, grid, "network_range_test", why, res.suggested_lr, res.min_loss_lr, steps, spent
    )
    return _regrid(cands, list(grid)), grids


def _network_range_test(model, head, data, train_idx, batch_size, seed, device, progress):
    """The range test of a copy of ``model`` under a new head, every backbone parameter
    at the backbone ratio (as in full fine-tuning)."""
    x, y, classes = data
    net = copy.deepcopy(model).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new_head = nn.Linear(net.get_submodule(head).in_features, classes).to(device)
        order = torch.randperm(len(train_idx)).numpy()
    replace_module(net, head, new_head)
    rows = np.asarray(train_idx)[order]
    batches = [
        (x[rows[i : i + batch_size]], y[rows[i : i + batch_size]])
        for i in range(0, len(rows), batch_size)
    ]
    head_ids = {id(p) for p in new_head.parameters()}
    backbone = [p for p in net.parameters() if id(p) not in head_ids]
    for p in net.parameters():
        p.requires_grad_(True)
    groups = [
        {"params": list(new_head.parameters()), "lr_scale": 1.0},
        {"params": backbone, "lr_scale": BACKBONE_LR_RATIO},
    ]
    return lr_range_test(
        net,
        batches,
        params=groups,
        num_steps=FINETUNE_TEST_STEPS,
        momentum=LR_TEST_MOMENTUM,
        device=device,
        progress=progress,
        desc="lr range test (whole network)",
    )


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


def unstable_arms(arms: list[Arm]) -> list[str]:
    """Strategies and depths measured at the last rung only at LRs too high for the run.

    An arm is unstable when each of its candidates that finished the last rung had its
    training loss end above where it started on most of its folds. A short first rung
    favours high LRs: on a real case (EfficientNet-Lite0, 40 labels per class) LoRA's
    best LR after 7 epochs scored 0.82 there and 0.10, chance, after 25, with its
    training loss rising; such an arm's place in the ranking says nothing about it at a
    stable LR.
    """
    ok = [a for a in arms if a.status == "ok" and a.rungs]
    if not ok:
        return []
    last = max(a.rungs[-1].rung for a in ok)
    finals: dict[str, list] = {}
    for a in ok:
        if a.rungs[-1].rung == last:
            finals.setdefault(a.cand.arm, []).append(a.rungs[-1])
    return [
        arm
        for arm, scores in finals.items()
        if all(2 * s.loss_rose_folds > s.folds for s in scores)
    ]


def unbracketed(arms: list[Arm]) -> list[str]:
    """Strategies and depths whose best LR is still on the edge of the LRs tried."""
    return [best.cand.arm for best, _ in _edges(arms)]
