"""The learning-forgetting front on hand-made strategy rows, and what a budget costs."""

from __future__ import annotations

import pytest

from diagnose.decide import select_strategy
from diagnose.decide.front import front_points, learning_forgetting_front


def _row(name, val, drop=None, agreement=None, flops=1e9, status="ok"):
    forgetting = {}
    if drop is not None:
        forgetting.update(source_accuracy_before=0.9, source_accuracy=0.9 - drop,
                          source_accuracy_drop=drop)  # fmt: skip
    if agreement is not None:
        forgetting["agreement"] = agreement
    return {"name": name, "status": status, "target": {"val_accuracy": val},
            "forgetting": forgetting, "cost": {"flops": flops}}  # fmt: skip


ROWS = [
    _row("feature_extraction", 0.80, drop=0.00),
    _row("lp_ft", 0.86, drop=0.02),
    _row("partial", 0.85, drop=0.03),  # dominated by lp_ft: less accurate, forgets more
    _row("full_low_lr", 0.90, drop=0.10),
    _row("discriminative", 0.90, drop=0.12),  # dominated: same accuracy, forgets more
    _row("scratch", 0.95, drop=0.50, status="diverged"),  # not finished: never on the front
    _row("l2_sp", 0.88),  # no forgetting measured: cannot be placed
]


def test_the_front_is_what_no_other_beats_on_both_and_runs_by_forgetting():
    front = learning_forgetting_front(ROWS)
    assert [p.name for p in front] == ["feature_extraction", "lp_ft", "full_low_lr"]
    assert [p.forgetting for p in front] == sorted(p.forgetting for p in front)
    # Brute force: a placed point is on the front iff nothing dominates it.
    points = front_points(ROWS)
    assert {p.name for p in points} == {"feature_extraction", "lp_ft", "partial",
                                        "full_low_lr", "discriminative"}  # fmt: skip
    for p in points:
        dominated = any(
            q.val_accuracy >= p.val_accuracy and q.forgetting <= p.forgetting
            and (q.val_accuracy > p.val_accuracy or q.forgetting < p.forgetting)
            for q in points
        )  # fmt: skip
        assert (p in front) != dominated, p.name


def test_ties_are_both_on_the_front_and_one_row_dominates_alone():
    rows = [_row("a", 0.9, drop=0.05), _row("b", 0.9, drop=0.05), _row("c", 0.8, drop=0.1)]
    assert [p.name for p in learning_forgetting_front(rows)] == ["a", "b"]
    assert learning_forgetting_front([]) == []


def test_mixed_measures_fall_back_to_disagreement():
    rows = [_row("a", 0.9, drop=0.05, agreement=0.8), _row("b", 0.85, agreement=0.95)]
    front = learning_forgetting_front(rows)
    assert {p.measure for p in front} == {"disagreement"}
    assert [p.name for p in front] == ["b", "a"]  # 0.05 then 0.2 disagreement


def test_a_budget_picks_the_most_accurate_on_the_front_within_it_and_says_the_cost():
    rec = select_strategy(ROWS, max_forgetting=0.05)
    assert rec.strategy == "lp_ft"
    assert rec.strategy in [p.name for p in learning_forgetting_front(ROWS)]
    assert rec.budget_cost == pytest.approx(0.90 - 0.86)
    said = [r for r in rec.reasons if "budget costs" in r]
    assert len(said) == 1 and "0.040" in said[0] and "0.100" in said[0]
    assert select_strategy(ROWS).budget_cost is None  # no budget: nothing given up
