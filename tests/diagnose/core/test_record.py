"""The typed results: reading results.json's dicts defensively and writing them back unchanged."""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError, dataclass

import numpy as np
import pytest

from diagnose.core import (
    Record,
    StrategyEntry,
    as_integer,
    as_number,
    as_number_map,
    as_text,
    read_as,
)


def _finished(name="partial", val=0.8, **extra):
    return {
        "name": name,
        "status": "ok",
        "message": None,
        "diverged": None,
        "overfitting": None,
        "config": {"epochs": 3, "lr": {"head": 0.01}},
        "target": {"val_accuracy": val, "test_accuracy": 0.75, "best_epoch": 2, "val_loss": 0.4},
        "forgetting": {
            "source_accuracy": 0.9,
            "source_accuracy_before": 1.0,
            "source_accuracy_drop": 0.1,
            "agreement": 0.95,
            "cka": {"block1": 0.9, "block2": 0.7},
            "weight_drift": {"block1": 0.01, "block2": None},
        },
        "cost": {
            "wall_s": 1.5,
            "flops": 123456789012,
            "flops_per_step": 1000,
            "steps": 12,
            "trainable_params": 42,
            "peak_mem_bytes": 2**30,
            "peak_mem_kind": "process_rss",
            "phases": [{"name": "train", "steps": 12}],
        },
        "curves": [{"epoch": 1, "val_loss": 0.5}],
        **extra,
    }


def test_number_readers_keep_ints_and_drop_what_is_not_a_finite_number():
    assert as_number(3) == 3 and isinstance(as_number(3), int)  # JSON text stays "3", not "3.0"
    assert as_number(np.int64(7)) == 7 and isinstance(as_number(np.int64(7)), int)
    assert as_number(0.25) == 0.25
    for bad in (float("nan"), float("inf"), True, "0.5", None, [1]):
        assert as_number(bad) is None, bad
    assert as_integer(3.0) == 3 and as_integer(2.5) is None
    assert as_text(1) is None and as_text("x") == "x"
    assert as_number_map({"a": 1.0, "b": float("nan")}) == {"a": 1.0, "b": None}
    assert as_number_map([1]) is None


@pytest.mark.parametrize(
    "entry",
    [
        _finished(),
        {"name": "lp_ft", "status": "failed", "message": "ValueError: boom"},
        _finished(
            seeds=[0, 1],
            per_seed=[{**_finished(val=0.7), "seed": 0}, {**_finished(val=0.9), "seed": 1}],
            spread={"target": {"val_accuracy": {"std": 0.1414, "min": 0.7, "max": 0.9, "n": 2}}},
        ),
        {**_finished(), "a_key_from_a_newer_version": {"x": 1}},
    ],
    ids=["finished", "failed", "seeds", "unknown key"],
)
def test_every_shape_of_entry_writes_back_exactly_what_it_read(entry):
    typed = StrategyEntry.from_dict(entry)
    assert typed.to_dict() == entry
    assert json.dumps(typed.to_dict(), sort_keys=True) == json.dumps(entry, sort_keys=True)


def test_an_entry_reads_as_attributes():
    e = StrategyEntry.from_dict(_finished())
    assert e.ok and e.finished and e.n_seeds == 1
    assert e.target.val_accuracy == 0.8 and e.cost.flops == 123456789012
    assert e.forgetting.mean_cka() == pytest.approx(0.8)  # (0.9 + 0.7) / 2, exact in float64
    assert e.spread_std("target", "val_accuracy") is None
    with pytest.raises(FrozenInstanceError):
        e.name = "other"
    seeds = StrategyEntry.from_dict(
        _finished(
            seeds=[0, 1],
            per_seed=[{**_finished(val=0.7), "seed": 0}],
            spread={"target": {"val_accuracy": {"std": 0.1, "n": 2}}},
        )
    )
    assert seeds.n_seeds == 2 and seeds.spread_std("target", "val_accuracy") == 0.1
    assert isinstance(seeds.per_seed[0], StrategyEntry) and seeds.per_seed[0].extra == {"seed": 0}


def test_a_damaged_entry_reads_as_none_instead_of_raising():
    bad = {
        "name": 3,
        "status": "ok",
        "config": "not a dict",
        "target": None,
        "forgetting": {"cka": "x", "agreement": "0.9"},
        "cost": {"flops": float("nan"), "steps": True},
    }
    e = StrategyEntry.from_dict(bad)
    assert e.name is None and e.config is None and not e.finished
    assert e.target.val_accuracy is None  # a null section reads as one with every field None
    assert e.forgetting.cka is None and e.forgetting.agreement is None
    assert e.forgetting.mean_cka() is None
    assert e.cost.flops is None and e.cost.steps is None
    assert StrategyEntry.from_dict("not a dict").name is None


def test_a_record_subclass_declares_its_readers():
    @dataclass(frozen=True)
    class Point(Record):
        x: float | None = read_as(as_number)

    p = Point.from_dict({"x": math.nan, "note": "kept"})
    assert p.x is None and p.to_dict() == {"x": None, "note": "kept"}
