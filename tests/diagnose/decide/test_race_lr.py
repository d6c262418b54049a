"""The fine-tuning strategies' own LR grid: the range test of the unfrozen network."""

from __future__ import annotations

import numpy as np
import torch

from diagnose.core import Recommendation
from diagnose.decide.candidates import Candidate, build_candidates, lr_grid
from diagnose.decide.race import run_race
from diagnose.decide.race_budget import TRAIN_PASSES, CostModel, TrialSizes
from diagnose.decide.race_lr import (
    FINETUNE_STRATEGIES,
    FINETUNE_TEST_SHARE,
    FINETUNE_TEST_STEPS,
    finetune_grid,
    unstable_arms,
)
from diagnose.decide.race_scoring import scoring_folds
from diagnose.measure import MIN_DISTINCT_BATCHES, lr_range_test
from tests.diagnose.tiny_models import Tiny, single_thread

BLOCKS = ["block1", "block2", "block3"]


def _pool(n_per_class, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 1, 8, 8, generator=g) * 0.3 + 1.5 * y.view(-1, 1, 1, 1).float()
    return x, y


def _cands():
    layers = [
        {"name": b, "probe": {"target": {"accuracy": a}}} for b, a in zip(BLOCKS, (0.5, 0.8, 0.7))
    ]
    results = {"layers": layers, "lr_find": {"suggested_lr": 0.05}}
    return build_candidates(results, Recommendation(strategy="lp_ft"), safe_forgetting=0.05)


def _grid(n_per_class, budget=0.5, batch_size=4):
    x, y = _pool(n_per_class)
    torch.manual_seed(0)
    net = Tiny(classes=5)
    cands = _cands()
    cost = CostModel.measure(net, BLOCKS, x[:1], net.head.in_features)
    train = np.arange(len(y))
    full = TrialSizes(cost, BLOCKS, len(train), 8, 3).sweep(cands, 12, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with single_thread():
        out, grids = finetune_grid(
            cands,
            model=net,
            head="head",
            x=x,
            y=y,
            classes=3,
            train_idx=train,
            cost=cost,
            full_estimate=full,
            budget=budget,
            batch_size=batch_size,
            seed=0,
            device=torch.device("cpu"),
            progress=False,
        )
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "model changed"
    return cands, out, grids, cost, full


def test_few_batches_keep_the_head_grid_and_say_why():
    cands, out, grids, _, _ = _grid(n_per_class=4)  # 12 images: 3 batches of 4
    assert out == cands
    assert grids.source == "head_grid" and grids.flops == 0 and grids.steps == 0
    assert f"under {MIN_DISTINCT_BATCHES}" in grids.why and "head's grid" in grids.why
    assert grids.fine_tuning == grids.head == tuple(lr_grid(0.05))


def test_enough_batches_give_fine_tuning_a_grid_around_the_network_test():
    cands, out, grids, cost, _ = _grid(n_per_class=20)  # 60 images: 15 batches of 4
    assert grids.source == "network_range_test", grids.why
    assert grids.fine_tuning == tuple(lr_grid(grids.suggested_lr))
    # Charged as the steps it took, each a batch through the network in TRAIN_PASSES passes.
    assert 0 < grids.steps <= FINETUNE_TEST_STEPS
    assert grids.flops == grids.steps * 4 * TRAIN_PASSES * cost.total
    for c in out:
        grid = grids.fine_tuning if c.strategy in FINETUNE_STRATEGIES else grids.head
        assert c.head_lr in grid, c.key
    # Every arm is kept, in the prior's order; only fine-tuning arms changed LRs.
    assert list(dict.fromkeys(c.arm for c in out)) == list(dict.fromkeys(c.arm for c in cands))
    assert [c for c in out if c.strategy not in FINETUNE_STRATEGIES] == [
        c for c in cands if c.strategy not in FINETUNE_STRATEGIES
    ]


def test_the_suggestion_is_the_range_test_of_the_unfrozen_network_transcribed():
    # The same test written out: a new head seeded like the race's, backbone at 0.1x.
    x, y = _pool(20)
    torch.manual_seed(0)
    net = Tiny(classes=5)
    _, _, grids, _, _ = _grid(n_per_class=20)
    ref = Tiny(classes=5)
    ref.load_state_dict(net.state_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref.head = torch.nn.Linear(ref.head.in_features, 3)
        order = torch.randperm(len(y)).numpy()
    batches = [(x[order[i : i + 4]], y[order[i : i + 4]]) for i in range(0, len(y), 4)]
    backbone = [p for n, p in ref.named_parameters() if not n.startswith("head.")]
    groups = [{"params": list(ref.head.parameters())}, {"params": backbone, "lr_scale": 0.1}]
    with single_thread():
        res = lr_range_test(
            ref, batches, params=groups, num_steps=FINETUNE_TEST_STEPS, progress=False
        )
    assert res.suggested_lr == grids.suggested_lr


def test_a_test_over_its_share_of_the_budget_is_not_run():
    cands, out, grids, cost, full = _grid(n_per_class=20, budget=0.001)
    assert out == cands and grids.source == "head_grid" and grids.flops == 0
    assert f"{FINETUNE_TEST_SHARE:.0%} of the race's budget" in grids.why


def test_the_race_charges_the_test_and_holds_its_budget():
    x, y = _pool(24)
    torch.manual_seed(0)
    net = Tiny(classes=5)
    idx = np.random.default_rng(0).permutation(len(y))
    folds, _ = scoring_folds(y.numpy(), idx[:56], idx[56:], seed=0)
    with single_thread():
        trials = run_race(
            _cands(),
            folds,
            x,
            y,
            3,
            model=net,
            head="head",
            blocks=BLOCKS,
            full_epochs=6,
            budget=0.3,
            batch_size=4,
            seed=0,
            device=torch.device("cpu"),
            progress=False,
        ).to_dict()
    grids = trials["lr_grids"]
    assert grids["source"] == "network_range_test", grids["why"]
    assert trials["flops_spent"] >= grids["flops"] + sum(r["flops"] for r in trials["rungs"])
    assert trials["flops_spent"] <= trials["budget"] * trials["full_flops_estimate"]
    raced = {(c["strategy"], c["head_lr"]) for c in trials["candidates"] if not c["lr_edge"]}
    for strategy, lr in raced:
        grid = grids["fine_tuning"] if strategy in FINETUNE_STRATEGIES else grids["head"]
        assert lr in grid, (strategy, lr)


def _arm(i, strategy, lr, rungs):
    from diagnose.decide.race_record import RungScore
    from diagnose.decide.race_trials import Arm

    a = Arm(i, Candidate(strategy, None, lr, "strategy", 0))
    a.rungs = [
        RungScore(r, 10 * (r + 1), 0.5, 1.0, (0.5,) * folds, folds, 1, 0.1, loss_rose_folds=rose)
        for r, (folds, rose) in enumerate(rungs)
    ]
    return a


def test_an_arm_whose_every_finalist_lost_its_training_is_unstable():
    arms = [
        _arm(0, "lora", 0.067, [(1, 0), (2, 2)]),  # both final folds: the loss rose
        _arm(1, "lora", 0.03, [(1, 0)]),  # not carried to the last rung
        _arm(2, "full_low_lr", 0.2, [(1, 0), (2, 2)]),
        _arm(3, "full_low_lr", 0.06, [(1, 0), (2, 1)]),  # one of two folds: not most
        _arm(4, "partial", 0.1, [(1, 0), (2, 0)]),
    ]
    assert unstable_arms(arms) == ["lora"]
    arms[0].status = "diverged"  # said as diverged, not here
    assert unstable_arms(arms) == []


def test_a_trial_records_whether_its_training_loss_rose():
    from diagnose.decide.race_trials import train_trial
    from diagnose.training import TargetData

    x, y = _pool(8)
    torch.manual_seed(0)
    net = Tiny(classes=5)
    data = TargetData(x[::2], y[::2], x[1::2], y[1::2], x[:1], y[:1], 3)
    # A sane LR, and one far too high that still keeps every loss finite (not diverged).
    for lr, rose in ((0.05, False), (10.0, True)):
        cand = Candidate("full_low_lr", None, lr, "strategy", 0)
        with single_thread():
            out = train_trial(cand, data, net, "head", BLOCKS, 6, 4, 0, torch.device("cpu"), {})
        assert out["diverged"] is None and out["loss_rose"] is rose
