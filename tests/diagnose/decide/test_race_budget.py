"""The race's budget: the cost model against FlopCounterMode, the plan's cuts, and the
budget held on a tiny target where the first rung alone used to exceed it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diagnose.core import Recommendation
from diagnose.decide.candidates import Candidate, build_candidates
from diagnose.decide.race import run_race
from diagnose.decide.race_budget import (
    FIRST_RUNG_SHARE,
    HEAD_LR_RANGE,
    CostModel,
    plan_race,
)
from diagnose.decide.race_scoring import scoring_folds
from tests.diagnose.tiny_models import Tiny, single_thread

BLOCKS = ["block1", "block2", "block3"]


def _cands(suggested=0.05, strategies=None):
    layers = [
        {"name": b, "probe": {"target": {"accuracy": a}}} for b, a in zip(BLOCKS, (0.5, 0.8, 0.7))
    ]
    results = {"layers": layers, "lr_find": {"suggested_lr": suggested}}
    kw = {"strategies": strategies} if strategies else {}
    return build_candidates(results, Recommendation(strategy="lp_ft"), safe_forgetting=0.05, **kw)


def test_cost_model_counts_the_forward_and_where_each_block_starts():
    torch.manual_seed(0)
    net = Tiny()
    x = torch.randn(1, 1, 8, 8)
    cost = CostModel.measure(net, BLOCKS, x, head_in=8)
    with FlopCounterMode(display=False) as counter:
        net.eval()(x)
    assert cost.total == counter.get_total_flops()
    # Tiny's convolutions (3x3, padding 1, 8x8 maps): 2 * 9 * c_in * c_out * 64 each.
    conv = [2 * 9 * ci * co * 64 for ci, co in ((1, 4), (4, 8), (8, 8))]
    assert cost.before == {"block1": 0, "block2": conv[0], "block3": conv[0] + conv[1]}
    assert cost.total == sum(conv) + 2 * 8 * 4  # plus the source head
    assert net.training is False  # restored: it was put in eval by the check above
    net.train()
    CostModel.measure(net, BLOCKS, x, head_in=8)
    assert net.training and not net.block1[0]._forward_pre_hooks  # mode and hooks restored


def test_cost_model_prices_a_partial_trial_by_its_frozen_prefix_and_trained_suffix():
    cost = CostModel(total=100.0, before={"block1": 0.0, "block2": 30.0, "block3": 60.0}, head_in=8)
    key, fixed, per_epoch = cost.trial(Candidate("partial", 1, 0.01, "", 0), BLOCKS, 10, 5, 3)
    assert key == ("prefix", 1) and fixed == 60.0 * 15  # the prefix once, train and held-out
    assert per_epoch == 3 * 40.0 * 10  # forward + both gradients of the suffix per image
    _, fixed, per_epoch = cost.trial(Candidate("full_low_lr", None, 0.01, "", 0), BLOCKS, 10, 5, 3)
    assert fixed == 0 and per_epoch == 3 * 100.0 * 10


def test_plan_drops_head_lrs_that_cannot_train_and_says_so():
    cands = _cands(suggested=2e-6)  # a range test far off: its grid plus the usual one
    cost = CostModel(1e6, {"block1": 0.0, "block2": 3e5, "block3": 6e5}, 8)
    plan = plan_race(
        cands, cost, blocks=BLOCKS, n_train=16, n_val=8, classes=3, n_folds=6,
        first_folds=2, epochs=[20, 50], min_epochs=20, budget=1.0,
    )  # fmt: skip
    lo, hi = HEAD_LR_RANGE
    assert all(lo <= c.head_lr <= hi for c in plan.candidates)
    cut = plan.cuts[0]
    assert cut.kind == "lr_range" and cut.before == len(cands) and cut.after < cut.before
    assert all(float(k.split("lr=")[1]) < lo for k in cut.dropped)


@pytest.mark.parametrize("budget", [0.2, 0.05, 0.01])
def test_plan_fits_the_first_rung_in_its_share_by_cuts_in_order(budget):
    cands = _cands()
    cost = CostModel(1e6, {"block1": 0.0, "block2": 3e5, "block3": 6e5}, 8)
    plan = plan_race(
        cands, cost, blocks=BLOCKS, n_train=16, n_val=8, classes=3, n_folds=6,
        first_folds=2, epochs=[50], min_epochs=20, budget=budget,
    )  # fmt: skip
    kinds = [c.kind for c in plan.cuts]
    order = ["folds", "first_rung", "lr_grid", "candidates"]
    assert kinds == sorted(kinds, key=order.index)  # cheaper cuts first
    assert plan.first_folds == 1  # a single 50-epoch rung split in two
    assert 20 <= plan.epochs[0] < 50 and plan.epochs[1:] == [50]
    if len({c.arm for c in plan.candidates}) > 1:
        assert plan.first_rung_estimate <= FIRST_RUNG_SHARE * budget * plan.full_estimate
    assert plan.candidates[0].strategy == "lp_ft"  # the prior's pick is never dropped
    assert [c.key for c in plan.candidates] == [c.key for c in cands if c in plan.candidates]
    for cut in plan.cuts:
        if cut.kind == "lr_grid":  # "least likely" only when some kept their grid
            every = len(cut.dropped) == len({c.arm for c in cands})
            assert ("for every strategy and depth" in cut.why) == every


@pytest.mark.parametrize("budget", [0.2, 0.05])
def test_a_tiny_target_keeps_its_budget_first_rung_included(budget):
    """24 images, one optimiser step per epoch: the full first rung would exceed the budget."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(8)
    x = torch.randn(24, 1, 8, 8, generator=g) * 0.3 + 1.5 * y.view(-1, 1, 1, 1).float()
    idx = np.random.default_rng(0).permutation(24)
    folds, _ = scoring_folds(y.numpy(), idx[:16], idx[16:], seed=0)
    torch.manual_seed(0)
    with single_thread():
        trials = run_race(
            _cands(), folds, x, y, 3, model=Tiny(classes=5), head="head", blocks=BLOCKS,
            full_epochs=50, budget=budget, batch_size=64, seed=0,
            device=torch.device("cpu"), progress=False,
        ).to_dict()  # fmt: skip
    assert trials["flops_spent"] <= budget * trials["full_flops_estimate"]
    assert trials["flops_spent"] == sum(c["flops"] for c in trials["candidates"])
    assert trials["rung_epochs"][0] < 50  # a shorter first rung, not a sweep at full length
    assert {c["kind"] for c in trials["cuts"]} >= {"folds", "first_rung"}
    assert all(c["why"] for c in trials["cuts"])
    assert trials["pick"] is not None
    # The cost model, calibrated on what the trials counted, is within a factor of two.
    assert 0.5 < trials["full_flops_estimate"] / trials["full_flops_prior_estimate"] < 2


def test_a_headless_backbone_is_raced_under_a_new_head():
    from torch import nn

    from diagnose.decide.measured import measured_recommendation

    torch.manual_seed(0)
    body = Tiny()
    body.head = nn.Identity()  # forward returns the 8 pooled features: no classifier
    before = {k: v.clone() for k, v in body.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(8)
    x = torch.randn(24, 1, 8, 8, generator=g) * 0.3 + 1.5 * y.view(-1, 1, 1, 1).float()
    idx = np.random.default_rng(0).permutation(24)
    layers = [
        {"name": b, "probe": {"target": {"accuracy": a}}} for b, a in zip(BLOCKS, (0.5, 0.8, 0.7))
    ]
    results = {
        "layers": layers,
        "lr_find": {"suggested_lr": 0.05},
        "target": {"classes": ["a", "b", "c"]},
    }
    prior = Recommendation(strategy="lp_ft", confidence="low", reasons=("prior",))
    warnings: list[str] = []
    with single_thread():
        rec = measured_recommendation(
            results, prior, model=body, head=None, blocks=BLOCKS, pool=(x, y),
            splits={"train": idx[:16], "val": idx[16:]}, trial_budget=0.2, batch_size=64,
            seed=0, device=torch.device("cpu"), progress=False, warnings=warnings,
        )  # fmt: skip
    assert rec.measured is True and rec.trials["new_head"] is True
    assert rec.trials["flops_spent"] <= 0.2 * rec.trials["full_flops_estimate"]
    assert rec.unfreeze[-1] == "head" and rec.new_head is True
    assert all(not u.startswith("body.") for u in rec.unfreeze)  # the user's own names
    assert set(rec.unfreeze_blocks) <= set(BLOCKS)
    assert any("no classification head" in w and "new linear head" in w for w in warnings)
    assert all(torch.equal(v, body.state_dict()[k]) for k, v in before.items())  # untouched


def test_finalists_keep_the_protocol_s_folds_before_more_of_them_run():
    """Fewer survivors on the protocol's first-rung folds beat more survivors on one fold."""
    from diagnose.decide.race import _fit_rung
    from diagnose.decide.race_trials import Arm

    arms = []
    for i in range(9):
        a = Arm(i, Candidate("full_low_lr", None, 0.01 * (i + 1), "strategy", 0))
        a.per_epoch, a.status = 1.0, "ok"
        arms.append(a)

    def cost(chosen, folds):
        return sum(a.estimate(10, folds) for a in chosen)

    # 6 survivors fit on 1 fold (60), only 3 on 2 folds (60): the protocol wants 2 folds.
    keep, folds = _fit_rung(arms, 6, cost, 0.0, 60.0, (2, 1), 6)
    assert (keep, folds) == (3, 2)
    # When not even two fit on 2 folds, the floor falls to the first rung's single fold.
    keep, folds = _fit_rung(arms, 6, cost, 0.0, 30.0, (2, 1), 6)
    assert (keep, folds) == (3, 1)


def test_a_lora_or_bitfit_pick_names_what_trains():
    from diagnose.decide.measured import _trained

    net = Tiny()
    lora = Candidate("lora", None, 0.01, "rank 4", 6, lora_rank=4)
    groups, unfreeze, cut = _trained(lora, net, "head", BLOCKS, new_head=False)
    assert unfreeze == ["block1.0", "block2.0", "block3.0", "head"] and groups == BLOCKS
    assert cut == "LoRA of rank 4 on 3 Linear and Conv2d layers of every block; head trains in full"
    bitfit = Candidate("bitfit", None, 0.01, "strategy", 5)
    _, _, cut = _trained(bitfit, net, "head", BLOCKS, new_head=False)
    assert cut == "the biases and normalisation parameters of every block train, and head"


def test_an_unstable_strategy_is_said_in_the_warnings(monkeypatch):
    from diagnose.decide import race
    from diagnose.decide.measured import measured_recommendation

    # Whether a trial's loss rose is tested in test_race_lr; here, what the race says.
    monkeypatch.setattr(race, "unstable_arms", lambda arms: ["discriminative"])
    torch.manual_seed(0)
    net = Tiny(classes=3)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(8)
    x = torch.randn(24, 1, 8, 8, generator=g) * 0.3 + 1.5 * y.view(-1, 1, 1, 1).float()
    idx = np.random.default_rng(0).permutation(24)
    results = {"layers": [{"name": b} for b in BLOCKS], "lr_find": {"suggested_lr": 0.05}}
    warnings: list[str] = []
    with single_thread():
        rec = measured_recommendation(
            results, Recommendation(strategy="lp_ft"), model=net, head="head", blocks=BLOCKS,
            pool=(x, y), splits={"train": idx[:16], "val": idx[16:]}, trial_budget=0.05,
            batch_size=64, seed=0, device=torch.device("cpu"), progress=False,
            warnings=warnings,
        )  # fmt: skip
    assert rec.trials["unstable"] == ["discriminative"]
    assert any("measured discriminative only at LRs too high" in w for w in warnings)
