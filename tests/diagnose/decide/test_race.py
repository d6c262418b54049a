"""The trial race: successive halving over real training runs, its budget, folds and gap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

import probes
from diagnose.core import Recommendation, check_params
from diagnose.decide.candidates import LR_GRID, Candidate, build_candidates, partial_depths
from diagnose.decide.race import run_race, rung_epochs
from diagnose.decide.race_lr import MAX_EDGE_STEPS
from diagnose.decide.race_reasons import race_reasons
from diagnose.decide.race_record import RaceSpend, RungScore
from diagnose.decide.race_scoring import KFOLD_REPEATS, SMALL_VAL, paired_gap, scoring_folds
from diagnose.models.cuts import cut_description, network_units, trainable_modules
from tests.diagnose.tiny_models import Tiny, single_thread


def _pool(n_per_class=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 1, 8, 8, generator=g) * 0.3
    x += 1.5 * y.view(-1, 1, 1, 1).float()  # a class signal any pooled CNN feature carries
    return x, y


def _race(budget=0.5, seed=0, strategies=("feature_extraction", "partial", "lp_ft"), meter=None):
    """``(candidates, results.json's trials, protocol)`` of a race on the tiny pool."""
    cands, record, protocol = _race_record(budget, seed, strategies, meter)
    return cands, record.to_dict(), protocol


def _race_record(budget, seed, strategies, meter):
    x, y = _pool()
    torch.manual_seed(0)
    net = Tiny(classes=5)
    blocks = ["block1", "block2", "block3"]
    layers = [
        {"name": b, "probe": {"target": {"accuracy": a}}} for b, a in zip(blocks, (0.5, 0.8, 0.7))
    ]
    results = {"layers": layers, "lr_find": {"suggested_lr": 0.05}}
    cands = build_candidates(
        results, Recommendation(strategy="lp_ft"), safe_forgetting=0.05, strategies=strategies
    )
    idx = np.arange(len(y))
    rng = np.random.default_rng(0)
    rng.shuffle(idx)
    folds, protocol = scoring_folds(y.numpy(), idx[:24], idx[24:], seed=seed)
    with single_thread():
        trials = run_race(
            cands,
            folds,
            x,
            y,
            3,
            model=net,
            head="head",
            blocks=blocks,
            full_epochs=12,
            budget=budget,
            batch_size=4,
            seed=seed,
            device=torch.device("cpu"),
            progress=False,
            meter=meter(net) if meter is not None else None,
            protocol=protocol,
        )
    return cands, trials, protocol


def test_rung_epochs_grow_by_eta_up_to_the_full_epochs():
    assert rung_epochs(15) == [2, 5, 15]
    assert rung_epochs(5) == [2, 5]
    assert rung_epochs(1) == [1]
    assert rung_epochs(50)[-1] == 50 and len(rung_epochs(50)) == 4
    assert rung_epochs(18, min_epochs=4) == [6, 18]  # no rung shorter than min_epochs
    assert rung_epochs(5, min_epochs=9) == [5]


def test_small_val_splits_are_replaced_by_repeated_stratified_kfold():
    y = np.repeat(np.arange(4), 10)
    train, val = np.arange(0, 40, 2), np.arange(1, 40, 2)
    folds, protocol = scoring_folds(y, train, val, seed=0)
    assert len(val) < SMALL_VAL and protocol.kind.startswith("repeated stratified k-fold")
    assert len(folds) == protocol.folds * protocol.repeats
    assert protocol.repeats == KFOLD_REPEATS
    for f in folds:
        assert not set(f.train) & set(f.held_out)
        assert set(f.train) | set(f.held_out) == set(range(40))  # train+val, nothing else
        assert np.bincount(y[f.held_out]).min() >= 1  # stratified
    # Each repeat scores every image exactly once.
    ids = np.concatenate([f.held_out for f in folds])
    assert np.all(np.bincount(ids) == protocol.repeats)


def test_a_class_with_one_image_trains_in_every_fold_and_is_never_scored():
    y = np.array([0] * 6 + [1] * 5 + [2])  # class 2 has a single labelled image
    train, val = np.arange(0, 12, 2), np.arange(1, 12, 2)
    folds, protocol = scoring_folds(y, train, val, seed=0)
    assert protocol.kind.startswith("repeated stratified k-fold") and protocol.folds == 3
    assert protocol.n_held_out == 11 and "1 image(s) of classes with a single" in protocol.note
    for f in folds:
        assert 11 in f.train and 11 not in f.held_out
        assert not set(f.train) & set(f.held_out)
        assert set(f.train) | set(f.held_out) == set(range(12))
    ids = np.concatenate([f.held_out for f in folds])
    assert np.all(np.bincount(ids, minlength=11)[:11] == protocol.repeats)
    # Only one class with two images: nothing to stratify, the val split stays.
    folds, protocol = scoring_folds(np.array([0, 0, 0, 1, 2]), [0, 1, 3], [2, 4], seed=0)
    assert protocol.kind == "val split" and "fewer than two classes" in protocol.note


def test_a_large_val_split_is_used_as_it_is():
    y = np.repeat(np.arange(2), 300)
    train, val = np.arange(0, 600, 2), np.arange(1, 600, 2)
    folds, protocol = scoring_folds(y, train, val, seed=0)
    assert len(folds) == 1 and protocol.kind == "val split"
    assert np.array_equal(folds[0].held_out, val)


def test_paired_gap_matches_the_formula_and_averages_repeated_images():
    a = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
    b = np.array([1, 0, 0, 0, 1, 1, 1, 0], bool)
    ids = np.arange(8)
    gap = paired_gap(a, b, ids)
    d = a.astype(float) - b.astype(float)
    half = 1.959963984540054 * d.std(ddof=1) / np.sqrt(8)
    assert gap.mean == pytest.approx(d.mean(), abs=1e-15)
    assert gap.ci_low == pytest.approx(d.mean() - half, abs=1e-15)
    assert gap.n_images == 8
    # The same images scored twice (two repeats) are still 8 images, not 16.
    twice = paired_gap(np.tile(a, 2), np.tile(b, 2), np.tile(ids, 2))
    assert twice.n_images == 8 and twice.ci_high == pytest.approx(gap.ci_high, abs=1e-15)


def test_partial_depths_include_the_fixed_ones_and_the_measured_cuts():
    layers = [
        {"name": f"b{i}", "probe": {"target": {"accuracy": a}}, "rgn": r}
        for i, (a, r) in enumerate(
            zip((0.3, 0.6, 0.9, 0.8, 0.7, 0.6), (0.1, 0.2, 0.3, 1.0, 0.4, 0.2))
        )
    ]
    depths = partial_depths(layers)
    assert {1, 2, 3} <= set(depths)  # last, last two, about half of 6
    # Peak at b2: everything after it (b3, b4, b5) is a cut of depth 3, already present;
    # Auto-RGN high (>= half the max) from b3 up: depth 3 too. Both are within 1..5.
    assert all(1 <= d < len(layers) for d in depths)
    layers[1]["probe"]["target"]["accuracy"] = 0.95  # peak at b1: cut after it, depth 4
    assert partial_depths(layers)[4].startswith("the target probe peaks at b1")


def test_candidates_cover_the_strategies_depths_and_an_lr_grid_in_prior_order():
    layers = [{"name": f"b{i}", "probe": {"target": {"accuracy": 0.5}}} for i in range(4)]
    cands = build_candidates(
        {"layers": layers, "lr_find": {"suggested_lr": 0.03}},
        Recommendation(strategy="discriminative"),
        safe_forgetting=0.05,
    )
    arms = {c.arm for c in cands}
    assert {"feature_extraction", "full_low_lr", "discriminative", "lp_ft"} <= arms
    # Last, last two (= about half of 4), and the flat probe curve's "peak" at b0: train
    # everything after it (depth 3). Depth 4 would be full fine-tuning, its own candidate.
    assert {a for a in arms if a.startswith("partial@")} == {"partial@1", "partial@2", "partial@3"}
    assert cands[0].strategy == "discriminative"  # the prior's pick first
    lrs = sorted({c.head_lr for c in cands if c.arm == "lp_ft"})
    assert len(lrs) == len(LR_GRID) >= 3 and lrs[1] == 0.03
    assert len({c.key for c in cands}) == len(cands)
    # A tight forgetting budget prunes every candidate that moves the backbone.
    tight = build_candidates(
        {"layers": layers},
        Recommendation(strategy="lp_ft", max_forgetting=0.01),
        safe_forgetting=0.05,
    )
    assert {c.strategy for c in tight} == {"feature_extraction"}


def test_race_on_the_tiny_model_holds_its_budget_and_reports_every_candidate():
    cands, trials, _ = _race(budget=0.8)
    keys = [c["key"] for c in trials["candidates"]]
    assert keys[: len(cands)] == [c.key for c in cands]
    # Beyond the given ones come only LRs past a grid edge, at most MAX_EDGE_STEPS per arm.
    extra = trials["candidates"][len(cands) :]
    assert all(c["lr_edge"] for c in extra)
    assert all(sum(c["arm"] == a["arm"] for c in extra) <= MAX_EDGE_STEPS for a in extra)
    assert not any(c["lr_edge"] for c in trials["candidates"][: len(cands)])
    assert trials["winner"] in keys and trials["pick"] in trials["leaders"]
    rung0 = trials["rungs"][0]["flops"]
    # The budget is kept, the first rung included.
    assert rung0 <= trials["flops_spent"] <= trials["budget_flops"]
    assert trials["flops_spent"] == sum(r["flops"] for r in trials["rungs"])
    assert trials["flops_spent"] == sum(c["flops"] for c in trials["candidates"])
    assert 0 < trials["flops_spent"] < trials["full_flops_estimate"]
    for c in trials["candidates"]:
        assert c["rungs"] and c["rungs"][0]["epochs"] == trials["rung_epochs"][0]
        assert 0 <= c["rungs"][-1]["val_accuracy"] <= 1
        if c["key"] != trials["winner"]:
            assert c["reason"]  # why it did not win
    later = [c for c in trials["candidates"] if len(c["rungs"]) > 1]
    assert later and len(later) < len(cands)  # the better part continued, not everyone


def test_a_grid_whose_best_lr_is_on_its_edge_gets_one_point_beyond_it():
    from diagnose.decide.race_lr import EDGE_STEP, edge_extensions
    from diagnose.decide.race_trials import Arm

    def arm(i, strategy, lr, acc):
        a = Arm(i, Candidate(strategy, None, lr, "strategy", 0))
        a.correct = np.array([True] * int(acc * 4) + [False] * (4 - int(acc * 4)))
        a.loss = np.full(4, 1.0 - acc)
        return a

    arms = [
        arm(0, "lp_ft", 0.01, 0.25),
        arm(1, "lp_ft", 0.03, 0.5),
        arm(2, "lp_ft", 0.1, 1.0),  # top edge best: extend upwards
        arm(3, "full_low_lr", 0.01, 1.0),  # bottom edge best: extend downwards
        arm(4, "full_low_lr", 0.03, 0.5),
        arm(5, "discriminative", 0.01, 0.25),
        arm(6, "discriminative", 0.03, 1.0),  # inside the grid: bracketed, no extension
        arm(7, "discriminative", 0.1, 0.5),
    ]
    extra = edge_extensions(arms)
    got = {(a.cand.strategy, a.cand.head_lr) for a in extra}
    assert got == {("lp_ft", float(f"{0.1 * EDGE_STEP:.3g}")), ("full_low_lr", 0.00333)}
    assert all(a.cand.lr_edge for a in extra)
    assert [a.index for a in extra] == [8, 9]  # after every given candidate


def test_race_is_deterministic_under_a_seed():
    _, a, _ = _race(budget=0.3, seed=1)
    _, b, _ = _race(budget=0.3, seed=1)
    strip = lambda t: [  # noqa: E731
        (c["key"], [(r["epochs"], r["val_accuracy"], r["flops"]) for r in c["rungs"]])
        for c in t["candidates"]
    ]
    assert strip(a) == strip(b)  # same code, same data, same process: exact
    assert a["pick"] == b["pick"] and a["gap"] == b["gap"]


def test_a_tiny_budget_stops_after_the_first_rung():
    _, trials, _ = _race(budget=0.01)
    assert len(trials["rungs"]) == 1
    assert trials["flops_spent"] == trials["rungs"][0]["flops"]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.2", True])
def test_trial_budget_errors_name_the_parameter(bad):
    with pytest.raises(ValueError, match="'trial_budget' parameter"):
        check_params("assess", trial_budget=bad)


@pytest.mark.parametrize(
    "arch, expected_last2",
    [
        ("resnet18", ["layer3", "layer4", "fc"]),
        ("efficientnet_b0", ["features.7", "features.8", "classifier.1"]),
        ("mobilenet_v3_small", ["features.11", "features.12", "classifier.0", "classifier.3"]),
    ],
)
def test_cut_names_every_trainable_module(arch, expected_last2):
    net = getattr(torchvision.models, arch)(num_classes=10)
    from diagnose.models.loaded import find_head

    head = find_head(net)
    blocks = probes.discover_layers(net)
    assert trainable_modules(net, blocks, head, blocks[-2:]) == expected_last2
    units = network_units(net, blocks, head)
    every = trainable_modules(net, blocks, head, blocks)
    assert every == units  # every module with parameters, in forward order
    owned = {n for n, _ in net.named_parameters()}
    covered = {n for n in owned if any(n == u or n.startswith(u + ".") for u in every)}
    assert covered == owned  # no parameter outside the listed modules
    assert cut_description(net, blocks, head, []).startswith("only the new head")


def test_cut_lists_unprobed_blocks_between_and_after_probed_ones():
    # Probing a subset (as timm's EfficientNet reports blocks 0, 1, 2, 4, 6): a cut before
    # features.4 trains features.3 too, and everything after the last probed block.
    net = torchvision.models.efficientnet_b0(num_classes=10)
    blocks = ["features.0", "features.2", "features.4", "features.6"]
    mods = trainable_modules(net, blocks, "classifier.1", ["features.4", "features.6"])
    assert mods == [
        "features.3",
        "features.4",
        "features.5",
        "features.6",
        "features.7",
        "features.8",
        "classifier.1",
    ]
    assert cut_description(net, blocks, "classifier.1", ["features.4", "features.6"]).startswith(
        "everything after features.2 trains"
    )


def test_a_candidate_reads_back_from_its_race_entry():
    c = Candidate("partial", 2, 0.03, "last two blocks", 1, lr_edge=True)
    entry = {**c.to_dict(), "rungs": [], "status": "ok"}
    assert Candidate.from_dict(entry) == c


def test_candidate_config_trains_the_last_depth_blocks():
    c = Candidate("partial", 2, 0.01, "last two blocks", 0)
    cfg = c.config(["a", "b", "c"], epochs=4, batch_size=8, seed=3)
    assert cfg.unfreeze == ["b", "c"] and cfg.epochs == 4 and cfg.head_lr == 0.01
    assert c.key == "partial@2 lr=0.01"


@pytest.fixture(scope="module")
def demo_race(loaded_demo, tmp_path_factory):
    from diagnose.workflows.assessment import assess

    out = tmp_path_factory.mktemp("race")
    res = assess(
        loaded_demo,
        "demo:digits",
        "demo:digits-noise",
        max_samples=200,
        n_permutations=20,
        progress=False,
        trial_budget=0.05,
        out=out,
    )
    return res, out


def test_assess_on_the_demo_recommends_from_a_measured_race(demo_race):
    res, out = demo_race
    rec = res.recommendation
    trials = rec.trials
    assert rec.measured is True and trials["pick"] is not None
    cand = next(c for c in trials["candidates"] if c["key"] == trials["pick"])
    assert rec.strategy == cand["strategy"] and rec.depth == cand["depth"]
    assert rec.lr["head"] == pytest.approx(cand["head_lr"], rel=1e-12)
    assert rec.unfreeze[-1] == "head"  # every trainable module, the new head last
    assert trials["budget"] == 0.05
    assert trials["flops_spent"] <= trials["budget_flops"] + trials["rungs"][0]["flops"]
    n = res.to_dict()["target"]
    assert trials["protocol"]["n_images"] == n["n_train"] + n["n_val"]  # never the test split
    html = (out / "report.html").read_text()
    assert "How the recommendation was measured" in html and "Every candidate" in html


def test_trial_budget_zero_keeps_the_rules_marked_unmeasured(loaded_demo, tmp_path):
    from diagnose.workflows.assessment import assess

    res = assess(
        loaded_demo,
        "demo:digits",
        "demo:digits-noise",
        max_samples=200,
        n_permutations=20,
        progress=False,
        trial_budget=0,
        out=tmp_path,
    )
    rec = res.recommendation
    assert rec.measured is False and rec.trials is None
    assert "--trial-budget 0" in rec.unmeasured_reason
    assert rec.strategy == rec.prior["strategy"]
    assert "unmeasured" in (tmp_path / "report.html").read_text()
    assert (
        json.loads((tmp_path / "results.json").read_text())["recommendation"]["measured"] is False
    )


def test_lr_grid_also_covers_the_usual_head_lrs_when_the_range_test_is_far_off():
    from diagnose.decide.candidates import lr_grid

    assert lr_grid(0.03) == [0.01, 0.03, 0.09]  # three points around the suggestion
    far = lr_grid(2.66e-6)  # seen on a real case: every candidate stayed at its init
    assert {8.87e-07, 2.66e-06, 7.98e-06} <= set(far) and {0.00333, 0.01, 0.03} <= set(far)


def _finalist(i, strategy, correct, loss, per_epoch):
    from diagnose.decide.race_trials import Arm

    a = Arm(i, Candidate(strategy, None, 0.01, "strategy", i))
    a.correct, a.loss = np.asarray(correct, dtype=bool), np.asarray(loss, dtype=np.float64)
    a.ids = np.arange(len(correct))
    a.per_epoch = per_epoch
    a.rungs = [RungScore(0, 5, float(a.correct.mean()), None, (), 1, 0, 0.0)]
    return a


@pytest.mark.parametrize("cheap_loss, picked", [(0.30, "feature_extraction"), (0.90, "lp_ft")])
def test_an_accuracy_tie_goes_to_the_cheaper_only_when_the_loss_does_not_separate_them(
    cheap_loss, picked
):
    from diagnose.decide.race import race_summary
    from diagnose.decide.race_trials import Arm

    n = 60
    rng = np.random.default_rng(0)
    correct = rng.random(n) < 0.9  # both right on the same images: an exact accuracy tie
    base = 0.3 + 0.05 * rng.standard_normal(n)
    dear = _finalist(0, "lp_ft", correct, base, per_epoch=100.0)
    cheap = _finalist(1, "feature_extraction", correct, base + (cheap_loss - 0.3), per_epoch=1.0)
    arms = [dear, cheap]
    ranked = sorted(arms, key=Arm.rank_key)
    spend = RaceSpend(eta=3, full_flops_estimate=1.0, budget=0.2)
    trials = race_summary(arms, ranked, spend, n_folds=1, full_epochs=5)
    assert trials.winner == "lp_ft lr=0.01"  # equal accuracy: the lower loss ranks first
    assert trials.within_noise and trials.pick.startswith(picked)
    assert trials.worse_by_loss == (() if picked == "feature_extraction" else (cheap.cand.key,))
    gap = trials.entry(cheap.cand.key).loss_gap_to_winner
    assert gap.mean == pytest.approx(cheap_loss - 0.3)
    # results.json holds the same verdict, in JSON
    as_json = json.loads(json.dumps(trials.to_dict()))
    assert as_json["pick"] == trials.pick and as_json["within_noise"] is True
    assert as_json["candidates"][1]["loss_gap_to_winner"]["mean"] == pytest.approx(gap.mean)


@pytest.mark.parametrize(
    "cheap_cost, kind", [(100.0, "accuracy"), (97.0, "accuracy"), (50.0, "cost")]
)
def test_a_cost_tie_is_called_a_tie_not_cheaper(cheap_cost, kind):
    from diagnose.decide.race import race_summary
    from diagnose.decide.race_reasons import _tie_break
    from diagnose.decide.race_trials import Arm
    from diagnose.decide.select import COST_TIE

    n = 60
    rng = np.random.default_rng(0)
    correct = rng.random(n) < 0.9
    loss = 0.3 + 0.05 * rng.standard_normal(n)
    winner = _finalist(0, "full_low_lr", correct, loss, per_epoch=100.0)
    winner.cand = Candidate("full_low_lr", None, 0.01, "strategy", 1)
    # a higher mean loss, by less than its noise: not measurably worse
    noisy = loss + 0.001 + 0.01 * rng.standard_normal(n)
    other = _finalist(1, "discriminative", correct, noisy, per_epoch=cheap_cost)
    other.cand = Candidate("discriminative", None, 0.01, "strategy", 0)  # the prior's pick
    arms = [winner, other]
    spend = RaceSpend(eta=3, full_flops_estimate=1.0, budget=0.2)
    trials = race_summary(arms, sorted(arms, key=Arm.rank_key), spend, n_folds=1, full_epochs=5)
    assert trials.winner.startswith("full_low_lr") and len(trials.tied) == 2
    assert trials.chosen_by_kind == kind and trials.cost_tie == COST_TIE
    # the same cost (or within 5%): the winner stays, whatever the prior prefers
    assert trials.pick.startswith("discrim" if kind == "cost" else "full_low_lr")
    text = _tie_break(trials, trials.entry(trials.pick), trials.tie_tolerance)
    if kind == "cost":
        assert "cheaper (full-run FLOPs more than 5% below" in text
    else:
        assert "cost the same" in text and "a tie, not cheaper" in text


def test_lora_and_bitfit_are_candidates_with_a_rank_grid():
    from diagnose.core.names import strategy_label
    from diagnose.decide.candidates import LORA_RANKS

    layers = [{"name": f"b{i}", "probe": {"target": {"accuracy": 0.5}}} for i in range(4)]
    cands = build_candidates(
        {"layers": layers, "lr_find": {"suggested_lr": 0.03}},
        Recommendation(strategy="lp_ft"),
        safe_forgetting=0.05,
    )
    lora = [c for c in cands if c.strategy == "lora"]
    assert {c.arm for c in lora} == {f"lora@r{r}" for r in LORA_RANKS}
    assert all(len([c for c in lora if c.lora_rank == r]) == len(LR_GRID) for r in LORA_RANKS)
    # The rule prior never names them: they come last, the first a tight budget cuts.
    assert [c.strategy for c in cands][-len(lora) - len(LR_GRID) :] == ["bitfit"] * len(LR_GRID) + [
        "lora"
    ] * len(lora)
    config = lora[0].config(["b0", "b1"], epochs=3, batch_size=8, seed=0)
    assert (config.lora_rank, config.lora_alpha) == (lora[0].lora_rank, 2.0 * lora[0].lora_rank)
    assert Candidate.from_dict(lora[0].to_dict()) == lora[0]
    assert strategy_label("lora@r4") == "LoRA, rank 4"


def test_a_race_of_bitfit_and_lora_trains_and_ranks_them():
    pytest.importorskip("peft")
    cands, trials, _ = _race(budget=0.8, strategies=("feature_extraction", "bitfit", "lora"))
    arms = {c["arm"] for c in trials["candidates"]}
    assert {"bitfit", "lora@r4", "lora@r16"} <= arms
    ok = [c for c in trials["candidates"] if c["arm"].startswith(("lora", "bitfit"))]
    assert ok and all(c["rungs"] and c["flops"] > 0 for c in ok)
    assert trials["flops_spent"] <= trials["budget_flops"]


def test_the_race_measures_what_its_finalists_forgot_and_draws_their_front():
    from diagnose.decide import learning_forgetting_front, race_front_rows
    from diagnose.measure import ForgettingMeter

    source = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(5))

    def meter(net):
        return ForgettingMeter(net, head="head", blocks=["block1", "block2", "block3"],
                               source_x=source, source_y=None, device="cpu", batch_size=8)  # fmt: skip

    _, record, protocol = _race_record(0.8, 0, ("feature_extraction", "partial", "lp_ft"), meter)
    trials = record.to_dict()
    assert trials["protocol"] == protocol.to_dict() and record.protocol is protocol
    # the recommendation's words read the typed record as run_race returns it
    reasons, _, _ = race_reasons(
        record, record.entry(record.pick), Recommendation(strategy="lp_ft")
    )
    assert f"on {protocol.n_held_out} held-out images" in reasons[0]
    last = max(len(c["rungs"]) for c in trials["candidates"])
    for c in trials["candidates"]:
        for r in c["rungs"]:
            full = r["epochs"] == trials["rung_epochs"][-1]
            assert ("agreement" in r) == full  # measured at the full epochs only
            if full:
                assert 0 <= r["agreement"] <= 1 and r["source_accuracy"] is None
    fe = [c for c in trials["candidates"] if c["strategy"] == "feature_extraction"]
    assert all(c["rungs"][-1]["agreement"] == 1.0 for c in fe if len(c["rungs"]) == last)
    rows = race_front_rows(record.entries, None)
    assert rows and {r["name"] for r in rows} <= {c["arm"] for c in trials["candidates"]}
    front = learning_forgetting_front(rows)
    assert front and all(p.measure == "disagreement" for p in front)
