"""The recommender is a pure function of the measurements: each rule tested on its own."""

from __future__ import annotations

import copy

import pytest

from diagnose.recommend import DISCRIMINATIVE_FACTOR, STRATEGIES, recommend

BLOCKS = ["block1", "block2", "block3", "block4"]


def _results(target, control, pad, *, pvalue=0.001, n_train=400, n_classes=10, lr=0.05):
    layers = []
    for name, t, c, p in zip(BLOCKS, target, control, pad):
        layers.append(
            {
                "name": name,
                "probe": {
                    "target": {"accuracy": t, "ci": [t - 0.02, t + 0.02]},
                    "control": {"accuracy": c, "ci": [c - 0.02, c + 0.02]},
                    "source": None,
                },
                "gap": {"pad": p, "mmd_pvalue": pvalue},
            }
        )
    return {
        "layers": layers,
        "target": {"classes": [str(i) for i in range(n_classes)], "n_train": n_train},
        "lr_find": {"suggested_lr": lr},
    }


def test_input_level_shift_tunes_every_block_at_low_lr():
    res = _results([0.8, 0.85, 0.9, 0.9], [0.5, 0.5, 0.5, 0.5], [1.8, 1.9, 1.9, 1.9])
    rec = recommend(res)
    assert rec["strategy"] == "full_low_lr"
    assert rec["unfreeze"] == BLOCKS
    assert rec["lr"]["block1"] == pytest.approx(0.005)
    assert any("PAD 1.80" in r for r in rec["reasons"])


def test_output_level_shift_tunes_blocks_after_the_best_layer():
    res = _results([0.6, 0.8, 0.7, 0.55], [0.4, 0.4, 0.4, 0.4], [0.1, 0.1, 0.2, 0.3])
    rec = recommend(res)
    assert rec["strategy"] == "partial"
    assert rec["unfreeze"] == ["block3", "block4"]
    assert set(rec["lr"]) == {"head", "block3", "block4"}
    assert any("0.800" in r and "0.550" in r for r in rec["reasons"])


def test_small_close_target_gets_feature_extraction():
    res = _results([0.7, 0.8, 0.9, 0.95], [0.4, 0.4, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4], n_train=300)
    rec = recommend(res)
    assert rec["strategy"] == "feature_extraction"
    assert rec["unfreeze"] == []
    assert rec["lr"] == {"head": 0.05}


def test_large_close_target_gets_discriminative_lrs():
    res = _results([0.7, 0.8, 0.9, 0.95], [0.4, 0.4, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4], n_train=5000)
    rec = recommend(res)
    assert rec["strategy"] == "discriminative"
    assert rec["lr"]["block4"] == pytest.approx(0.05 / DISCRIMINATIVE_FACTOR)
    assert rec["lr"]["block1"] == pytest.approx(0.05 / DISCRIMINATIVE_FACTOR**4)


def test_no_pretraining_benefit_trains_everything_with_low_confidence():
    res = _results([0.5, 0.6, 0.6, 0.6], [0.5, 0.6, 0.6, 0.61], [0.2, 0.3, 0.4, 0.5])
    rec = recommend(res)
    assert rec["strategy"] == "full_low_lr" and rec["confidence"] == "low"
    assert any("within -0.010 of the random-init control" in r for r in rec["reasons"])


def test_missing_lr_find_falls_back_and_says_so():
    res = _results([0.7, 0.8, 0.9, 0.95], [0.4, 0.4, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4])
    res["lr_find"] = None
    rec = recommend(res)
    assert rec["lr"]["head"] == pytest.approx(1e-2)
    assert "no suggestion" in rec["reasons"][0]


def test_no_target_probes_gives_low_confidence_full_fine_tuning():
    rec = recommend({"layers": [{"name": "a", "probe": {"target": None}}], "lr_find": {}})
    assert rec["strategy"] == "full_low_lr" and rec["confidence"] == "low"


def test_pure_function_and_contract():
    res = _results([0.6, 0.8, 0.7, 0.55], [0.4, 0.4, 0.4, 0.4], [0.1, 0.1, 0.2, 0.3])
    before = copy.deepcopy(res)
    rec = recommend(res)
    assert res == before  # no mutation
    assert recommend(res) == rec  # deterministic
    assert rec["strategy"] in STRATEGIES
    assert set(rec) >= {
        "strategy",
        "unfreeze",
        "lr",
        "epochs",
        "reasons",
        "would_change_if",
        "confidence",
    }
    assert 5 <= rec["epochs"] <= 50
