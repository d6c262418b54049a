"""The measured recommendation: budget, ties, failed runs, unknown forgetting, the assessment."""

from __future__ import annotations

import copy
import json
import math

import pytest

from diagnose.core import Selection, StrategyEntry
from diagnose.decide.select import COST_TIE, excluded, forgetting_of, select_strategy


def _run(name, val, *, test=None, drop=None, agreement=None, flops=None, wall=None, status="ok"):
    return {
        "name": name,
        "status": status,
        "message": None,
        "target": {"val_accuracy": val, "test_accuracy": test},
        "forgetting": {"source_accuracy_drop": drop, "agreement": agreement},
        "cost": {"flops": flops, "wall_s": wall},
    }


def test_highest_validation_accuracy_wins_and_reasons_cite_values():
    runs = [
        _run("feature_extraction", 0.80, test=0.79, drop=0.0, flops=1e9),
        _run("full_low_lr", 0.90, test=0.88, drop=0.10, flops=1e11),
        _run("partial", 0.85, test=0.84, drop=0.03, flops=1e10),
    ]
    rec = select_strategy(runs)
    assert rec.strategy == "full_low_lr"
    assert rec.val_accuracy == 0.90 and rec.test_accuracy == 0.88
    assert rec.forgetting == pytest.approx(0.10) and rec.cost_flops == 1e11
    # ranking: by validation accuracy, best first (independent sort)
    assert list(rec.ranking) == [
        r["name"] for r in sorted(runs, key=lambda r: -r["target"]["val_accuracy"])
    ]
    assert "0.900" in rec.reasons[0] and "0.880" in rec.reasons[0]
    assert any("partial fine-tuning at 0.850" in r for r in rec.reasons)
    assert rec.excluded == () and rec.max_forgetting is None


def test_forgetting_budget_excludes_and_says_why():
    runs = [
        _run("full_low_lr", 0.90, drop=0.20, flops=1e11),
        _run("partial", 0.85, drop=0.01, flops=1e10),
    ]
    assert select_strategy(runs).strategy == "full_low_lr"
    rec = select_strategy(runs, max_forgetting=0.05)
    assert rec.strategy == "partial" and list(rec.ranking) == ["partial"]
    assert rec.max_forgetting == 0.05
    (excluded,) = rec.excluded
    assert excluded.name == "full_low_lr" and excluded.cause == "over_budget"
    assert "0.200" in excluded.reason and "0.050" in excluded.reason
    assert any("full fine-tuning, low LR" in r and "budget" in r for r in rec.reasons)
    # the budget is inclusive: forgetting exactly at the budget stays eligible
    assert select_strategy(runs, max_forgetting=0.20).strategy == "full_low_lr"


def test_tie_within_tolerance_goes_to_the_cheaper_run():
    runs = [
        _run("full_low_lr", 0.900, flops=1e11, wall=50.0),
        _run("feature_extraction", 0.897, flops=1e9, wall=2.0),
        _run("partial", 0.850, flops=1e8, wall=1.0),  # cheapest but not tied
    ]
    rec = select_strategy(runs)
    assert rec.strategy == "feature_extraction"
    assert set(rec.tied) == {"full_low_lr", "feature_extraction"}
    assert list(rec.ranking) == ["feature_extraction", "full_low_lr", "partial"]
    assert "cheapest" in rec.reasons[0] and "1e+09 FLOPs" in rec.reasons[0]
    # no tolerance: the strictly better one wins
    assert select_strategy(runs, tie_tolerance=0.0).strategy == "full_low_lr"
    # a tolerance wide enough to tie all three picks the cheapest of all
    assert select_strategy(runs, tie_tolerance=0.06).strategy == "partial"


def test_tie_with_equal_flops_ignores_wall_time_and_unknown_flops_use_it():
    runs = [
        _run("discriminative", 0.900, flops=1e10, wall=30.0),
        _run("l2_sp", 0.899, flops=1e10, wall=10.0),
    ]
    # wall time is run-to-run noise: equal FLOPs go to the better validation accuracy
    assert select_strategy(runs).strategy == "discriminative"
    runs = [_run("a", 0.900, flops=None, wall=5.0), _run("b", 0.899, flops=None, wall=1.0)]
    assert select_strategy(runs).strategy == "b"
    # unknown FLOPs count as more expensive than any known cost
    runs = [_run("a", 0.900, flops=None, wall=1.0), _run("b", 0.899, flops=5e12, wall=99.0)]
    assert select_strategy(runs).strategy == "b"


def test_a_flops_tie_is_called_a_tie_not_the_cheaper_run():
    # As in a real comparison: full fine-tuning and scratch cost the same FLOPs, and the
    # winner of the tie took 14.9 s against the other's 2.7 s.
    runs = [
        _run("full_low_lr", 0.901, flops=2.5e10, wall=14.9),
        _run("l2_sp", 0.899, flops=2.5e10, wall=2.7),
    ]
    rec = select_strategy(runs)
    assert rec.strategy == "full_low_lr"  # deterministic: wall time never decides
    first = rec.reasons[0]
    assert first.startswith("Full fine-tuning, low LR reached")  # a sentence opens capitalised
    assert "cheapest" not in first and "cheaper" not in first
    assert "ties on training compute with L2-SP (2.5e+10 FLOPs each)" in first
    assert "its higher validation accuracy decides" in first
    assert "full fine-tuning, low LR 14.9 s; L2-SP 2.7 s" in first
    # a three-way tie: cheapest against the dearer run, a tie against the equal one
    runs.append(_run("discriminative", 0.900, flops=9e10, wall=1.0))
    first = select_strategy(runs).reasons[0]
    assert "it is the cheapest (2.5e+10 FLOPs, 14.9 s), vs discriminative LRs 9e+10 FLOPs" in first
    assert "it also ties on training compute with L2-SP" in first
    # equal accuracy and FLOPs: the input order decides, and the text says so
    runs = [_run("partial", 0.9, flops=1e9, wall=5.0), _run("lp_ft", 0.9, flops=1e9, wall=1.0)]
    rec = select_strategy(runs)
    assert rec.strategy == "partial"
    assert "the order of --strategies decides" in rec.reasons[0]


def test_flops_within_the_cost_tie_are_a_tie_and_the_more_accurate_wins():
    # As in a real report: four strategies at chance, feature extraction 0.3% cheaper
    # than partial fine-tuning was called "the cheapest".
    runs = [
        _run("partial", 0.902, flops=3.27e8, wall=0.4),
        _run("feature_extraction", 0.900, flops=3.26e8, wall=0.3),
        _run("lora", 0.901, flops=5.06e8, wall=0.7),
    ]
    rec = select_strategy(runs)
    assert rec.strategy == "partial"  # the same cost (within COST_TIE): accuracy decides
    first = rec.reasons[0]
    assert "ties on training compute with feature extraction" in first
    assert f"3.26e+08 to 3.27e+08 FLOPs, within {COST_TIE:.0%}" in first
    assert "its higher validation accuracy decides" in first
    assert "in the cost tie of the cheapest" in first and "LoRA 5.06e+08 FLOPs" in first
    # More than COST_TIE cheaper is cheaper: that run wins the tie.
    runs[1] = _run("feature_extraction", 0.900, flops=3.27e8 * (1 - 2 * COST_TIE), wall=0.3)
    assert select_strategy(runs).strategy == "feature_extraction"


def test_a_cost_tie_is_with_the_cheapest_run_and_the_reason_says_which():
    # Ties do not chain: b is within COST_TIE of a and of c, c is not of a.
    runs = [
        _run("a_lp", 0.900, flops=100.0),
        _run("b_ft", 0.902, flops=104.0),
        _run("c_ft", 0.904, flops=108.0),
    ]
    rec = select_strategy(runs)
    assert rec.strategy == "b_ft"  # of the cheapest's cost, and the more accurate there
    first = rec.reasons[0]
    assert (
        "in the cost tie of the cheapest (100 to 104 FLOPs, within 5% of the cheapest), " in first
    )
    assert "vs c_ft 108 FLOPs, more than 5% above the cheapest" in first
    assert "ties on training compute with a_lp (100 to 104 FLOPs, within 5% of the" in first
    assert "its higher validation accuracy decides" in first
    assert "c_ft" not in first.split("ties on training compute")[1]


def test_runs_without_counted_flops_are_said_so_and_never_cheaper():
    # Two identical runs without FLOPs (as a hand-edited file may hold) do not crash.
    rec = select_strategy([_run("full_low_lr", 0.9, wall=1.0)] * 2)
    assert "no tied run's FLOPs were counted" in rec.reasons[0]
    rec = select_strategy([_run("a", 0.9, flops=1e12, wall=1.0), _run("b", 0.9, wall=0.5)])
    assert rec.strategy == "a" and "cheapest" not in rec.reasons[0]
    assert "b had no counted FLOPs, and runs with counted FLOPs come first" in rec.reasons[0]
    rec = select_strategy([_run("a", 0.9, wall=2.0), _run("b", 0.899, wall=1.0)])
    assert rec.strategy == "b" and "its shorter wall time decides" in rec.reasons[0]
    rec = select_strategy([_run("a", 0.9, wall=1.0), _run("b", 0.9, wall=1.0)])
    assert rec.strategy == "a" and "the order of --strategies, decides" in rec.reasons[0]


def test_reasons_use_display_names():
    runs = [_run("lp_ft", 0.9, drop=0.3), _run("l2_sp", 0.8, drop=0.01)]
    rec = select_strategy(runs, max_forgetting=0.1, assessment={"strategy": "lp_ft"})
    text = " ".join(rec.reasons)
    assert rec.strategy == "l2_sp" and list(rec.ranking) == ["l2_sp"]  # data keeps machine names
    assert text.startswith("L2-SP reached the highest validation accuracy")
    assert "budget: LP-FT." in text and "The assessment predicted LP-FT" in text
    assert "lp_ft" not in text and "l2_sp" not in text


def test_failed_and_diverged_runs_are_ignored_even_when_higher():
    runs = [
        {"name": "lp_ft", "status": "failed", "message": "CUDA out of memory"},
        {
            **_run("scratch", 0.99, status="diverged"),
            "diverged": {"step": 40, "epoch": 2, "lr": 0.5, "loss": None},
        },
        _run("partial", 0.70, agreement=0.9),
        _run("l2_sp", None),  # finished but no validation accuracy
    ]
    rec = select_strategy(runs)
    assert rec.strategy == "partial" and list(rec.ranking) == ["partial"]
    reasons = {x.name: x.reason for x in rec.excluded}
    assert reasons["lp_ft"] == "failed: CUDA out of memory"
    assert reasons["scratch"].startswith("diverged at epoch 2, step 40 (LR 0.5)")
    assert "without a validation accuracy" in reasons["l2_sp"]
    # scratch diverged: its accuracy must not feed the "pretraining buys" sentence
    assert not any("from scratch" in r for r in rec.reasons)


def test_forgetting_measure_prefers_source_drop_then_disagreement():
    assert forgetting_of(_run("a", 0.5, drop=0.04, agreement=0.5)) == (0.04, "source_accuracy_drop")
    value, measure = forgetting_of(_run("a", 0.5, agreement=0.75))
    assert value == pytest.approx(0.25) and measure == "disagreement"
    assert forgetting_of({"name": "a"}) == (None, None)
    assert forgetting_of({"forgetting": {"agreement": float("nan")}}) == (None, None)
    # disagreement counts against the budget like a drop
    runs = [_run("a", 0.9, agreement=0.7), _run("b", 0.8, agreement=0.98)]
    rec = select_strategy(runs, max_forgetting=0.1)
    assert rec.strategy == "b" and rec.forgetting_measure == "disagreement"
    assert rec.forgetting == pytest.approx(0.02)


def test_unknown_forgetting_counts_only_without_a_budget():
    runs = [_run("full_low_lr", 0.9), _run("partial", 0.8, drop=0.01)]
    rec = select_strategy(runs)
    assert rec.strategy == "full_low_lr" and rec.forgetting is None
    assert any("not measured" in r for r in rec.reasons)
    rec = select_strategy(runs, max_forgetting=0.5)
    assert rec.strategy == "partial"
    assert [x.name for x in rec.excluded] == ["full_low_lr"]
    assert "not measured" in rec.excluded[0].reason


def test_agreement_with_the_assessment_and_regret():
    runs = [
        _run("partial", 0.91, drop=0.02),
        _run("feature_extraction", 0.86, drop=0.0),
        _run("scratch", 0.40),
    ]
    # prediction given as the recommendation dict
    rec = select_strategy(runs, assessment={"strategy": "feature_extraction"})
    assert rec.strategy == "partial"
    assert rec.assessment_prediction == "feature_extraction"
    assert rec.agrees_with_assessment is False
    assert rec.regret == pytest.approx(0.91 - 0.86)
    assert any("lost 0.050" in r for r in rec.reasons)
    assert any("pretraining buys +0.510" in r for r in rec.reasons)
    # ... or as the whole assessment results dict
    rec = select_strategy(runs, assessment={"recommendation": {"strategy": "partial"}})
    assert rec.agrees_with_assessment is True and rec.regret == pytest.approx(0.0)
    # predicted strategy not measured: no regret
    rec = select_strategy(runs, assessment={"strategy": "lp_ft"})
    assert rec.agrees_with_assessment is False and rec.regret is None
    assert any("LP-FT, which is not among the strategies compared" in r for r in rec.reasons)
    # ... or run and failed
    failed = [*runs, {"name": "lp_ft", "status": "error", "message": "boom"}]
    rec = select_strategy(failed, assessment={"strategy": "lp_ft"})
    assert any("LP-FT, which was not measured successfully" in r for r in rec.reasons)
    # no assessment at all
    rec = select_strategy(runs)
    assert rec.assessment_prediction is None
    assert rec.agrees_with_assessment is None and rec.regret is None


def test_regret_is_negative_when_the_prediction_was_excluded_by_the_budget():
    runs = [_run("full_low_lr", 0.95, drop=0.3), _run("partial", 0.90, drop=0.01)]
    rec = select_strategy(runs, max_forgetting=0.05, assessment={"strategy": "full_low_lr"})
    assert rec.strategy == "partial"
    assert rec.regret == pytest.approx(0.90 - 0.95)
    assert any("was excluded" in r for r in rec.reasons)


def test_no_valid_entry_gives_no_strategy_and_the_reason():
    runs = [
        {"name": "lp_ft", "status": "failed", "message": "boom"},
        {"name": "scratch", "status": "diverged"},
    ]
    rec = select_strategy(runs, assessment={"strategy": "partial"})
    assert rec.strategy is None and list(rec.ranking) == [] and rec.regret is None
    assert "No strategy finished" in rec.reasons[0] and "boom" in rec.reasons[0]
    assert rec.assessment_prediction == "partial"
    assert list(select_strategy([]).reasons) == ["The comparison holds no strategy runs."]
    # everything over budget: the reason names the least forgetting
    rec = select_strategy([_run("a", 0.9, drop=0.3), _run("b", 0.8, drop=0.2)], max_forgetting=0.1)
    assert rec.strategy is None
    assert any("b's (0.200)" in r for r in rec.reasons)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_max_forgetting_is_rejected(bad):
    with pytest.raises(
        ValueError, match=r"'max_forgetting' parameter of select_strategy .* \[0, 1\]"
    ):
        select_strategy([_run("a", 0.9)], max_forgetting=bad)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="'tie_tolerance' parameter"):
        select_strategy([], tie_tolerance=-0.01)
    with pytest.raises(TypeError, match="results.json dicts. Got dict instead"):
        select_strategy({"name": "a"})
    with pytest.raises(TypeError, match="Got str at index 1"):
        select_strategy([_run("a", 0.9), "partial"])


def test_pure_and_json_safe():
    runs = [_run("a", 0.9, drop=0.01, flops=1e9), _run("b", float("nan"), drop=0.0)]
    before = copy.deepcopy(runs)
    rec = select_strategy(runs, max_forgetting=0.1, assessment={"strategy": "b"})
    assert repr(runs) == repr(before)  # the input is not modified
    text = json.dumps(rec.to_dict(), allow_nan=False)  # no NaN or inf anywhere
    assert json.loads(text)["strategy"] == "a"
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in rec.to_dict().values())
    assert Selection.from_dict(json.loads(text)) == rec  # results.json reads back the same


def test_a_reason_is_a_code_with_its_values_and_typed_entries_select_the_same():
    runs = [_run("partial", 0.85, drop=0.02), _run("full_low_lr", 0.90, drop=0.20)]
    rec = select_strategy(runs, max_forgetting=0.05)
    (x,) = rec.excluded
    # What decisions read: the cause and the values it cites, not the sentence.
    assert (x.cause, x.measured, x.measure, x.budget) == (
        "over_budget", pytest.approx(0.20), "source_accuracy_drop", 0.05,
    )  # fmt: skip
    assert (
        x.reason
        == excluded(
            "full_low_lr", "over_budget", measured=0.20, measure="source_accuracy_drop", budget=0.05
        ).reason
    )
    # results.json keeps its schema: the sentence is written, the code and values beside it.
    assert rec.to_dict()["excluded"][0]["reason"] == x.reason
    assert {"name", "cause", "reason", "measured", "budget"} <= set(rec.to_dict()["excluded"][0])
    typed = select_strategy([StrategyEntry.from_dict(r) for r in runs], max_forgetting=0.05)
    assert typed == rec
