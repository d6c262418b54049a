"""The recommender is a pure function of the measurements: each rule tested both ways.

Every rule gets a hand-made measurement dict on which it fires and a twin,
one measurement changed past its threshold, on which it does not.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from diagnose.decide.rules import (
    DISCRIMINATIVE_FACTOR,
    EARLY_LOSS,
    LARGE_PER_CLASS,
    SAFE_FORGETTING,
    SMALL_PER_CLASS,
    STRATEGIES,
    recommend,
)

BLOCKS = ["block1", "block2", "block3", "block4"]
CLOSE = {
    "target": [0.7, 0.8, 0.9, 0.95],
    "control": [0.4, 0.4, 0.5, 0.5],
    "pad": [0.1, 0.2, 0.3, 0.4],
}
# Noise-like: a large gap from the first block, where the target lost what the source had.
NOISY = {
    "target": [0.50, 0.70, 0.95, 0.98],
    "control": [0.45, 0.60, 0.85, 0.92],
    "pad": [2.0, 2.0, 2.0, 2.0],
    "source": [0.85, 0.94, 0.99, 0.99],
}


def _results(
    target,
    control,
    pad,
    *,
    source=None,
    pvalue=0.001,
    n_train=720,
    n_classes=10,
    lr=0.05,
    rgn=None,
    source_classes=True,
):
    layers = []
    for i, name in enumerate(BLOCKS):
        src = None if source is None else {"accuracy": source[i], "ci": [0, 1]}
        layer = {
            "name": name,
            "probe": {
                "target": {"accuracy": target[i], "ci": [target[i] - 0.02, target[i] + 0.02]},
                "control": {"accuracy": control[i], "ci": [control[i] - 0.02, control[i] + 0.02]},
                "source": src,
            },
            "gap": {"pad": pad[i], "mmd_pvalue": pvalue},
        }
        if rgn is not None:
            layer["rgn"] = rgn[i]
        layers.append(layer)
    classes = [str(i) for i in range(n_classes)]
    return {
        "layers": layers,
        "source": {"classes": classes if source_classes else ["a", "b"]},
        "target": {"classes": classes, "n_train": n_train},
        "lr_find": {"suggested_lr": lr},
    }


def _close(**kw):
    return _results(CLOSE["target"], CLOSE["control"], CLOSE["pad"], **kw)


def _noisy(**kw):
    args = {"target": NOISY["target"], "source": NOISY["source"], **kw}
    return _results(args.pop("target"), NOISY["control"], NOISY["pad"], **args)


# Rule 1: a tight forgetting budget leaves only feature extraction.
def test_tight_forgetting_budget_freezes_the_backbone():
    rec = recommend(_noisy(), max_forgetting=0.01)
    assert rec.strategy == "feature_extraction" and rec.unfreeze == ()
    assert rec.lr == {"head": 0.05}
    assert rec.max_forgetting == 0.01
    assert any("budget is 0.010" in r for r in rec.reasons)


def test_loose_forgetting_budget_does_not_force_feature_extraction():
    assert recommend(_noisy(), max_forgetting=SAFE_FORGETTING).strategy == "discriminative"
    assert recommend(_noisy(), max_forgetting=None).strategy == "discriminative"


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_forgetting_budget_out_of_range_is_a_one_line_error(bad):
    with pytest.raises(
        ValueError, match=r"'max_forgetting' parameter of recommend must be a number in \[0, 1\]"
    ):
        recommend(_close(), max_forgetting=bad)


# Rule 2: small and close -> feature extraction.
def test_small_close_target_gets_feature_extraction():
    rec = recommend(_close(n_train=(SMALL_PER_CLASS - 10) * 10))
    assert rec.strategy == "feature_extraction"
    assert rec.unfreeze == () and rec.lr == {"head": 0.05}
    assert any("20 training images per class" in r for r in rec.reasons)


def test_enough_images_per_class_tunes_after_the_head():
    assert recommend(_close(n_train=SMALL_PER_CLASS * 10)).strategy == "lp_ft"


def test_small_target_with_an_input_level_shift_is_not_frozen():
    rec = recommend(_noisy(n_train=200))
    assert rec.strategy == "discriminative"


# Rule 3: input-level shift that destroys the early features -> every block at a low LR.
def test_input_shift_with_early_information_loss_tunes_every_block():
    rec = recommend(_noisy(rgn=[1.0, 0.4, 0.1, 0.05]))
    assert rec.strategy == "discriminative"
    assert rec.unfreeze == tuple(BLOCKS)
    assert rec.lr["block4"] == pytest.approx(0.05 / DISCRIMINATIVE_FACTOR)
    assert rec.lr["block1"] == pytest.approx(0.05 / DISCRIMINATIVE_FACTOR**4)
    assert rec.confidence == "medium"  # RGN agrees; never high (seed spread on the demo)
    assert any("0.500 against 0.850" in r and "0.350 lost" in r for r in rec.reasons)
    assert any("Auto-RGN agrees" in r for r in rec.reasons)


def test_input_shift_whose_early_features_keep_the_classes_gets_lp_ft():
    kept = NOISY["source"][0] - EARLY_LOSS + 0.01  # just under the threshold
    rec = recommend(_noisy(target=[kept, 0.9, 0.97, 0.98]))
    assert rec.strategy == "lp_ft"
    assert any("still carry the classes" in r for r in rec.reasons)
    assert any("full fine-tuning" in w for w in rec.would_change_if)


def test_early_loss_without_an_input_gap_is_not_an_input_level_shift():
    res = _noisy()
    for layer in res["layers"]:
        layer["gap"]["pad"] = 0.3
    assert recommend(res).strategy == "lp_ft"
    res = _noisy(pvalue=0.4)  # PAD large but the MMD test does not reject
    assert recommend(res).strategy == "lp_ft"


def test_early_loss_is_only_read_when_source_and_target_share_the_classes():
    rec = recommend(_noisy(source_classes=False))
    assert rec.strategy == "lp_ft"
    assert any("cannot be told" in r for r in rec.reasons)


def test_rgn_disagreeing_lowers_the_confidence():
    rec = recommend(_noisy(rgn=[0.2, 0.4, 0.6, 1.0]))
    assert rec.strategy == "discriminative" and rec.confidence == "low"
    assert any("Auto-RGN disagrees" in r and "block4" in r for r in rec.reasons)


# Rule 4: a large close target -> discriminative LRs.
def test_large_close_target_gets_discriminative_lrs():
    rec = recommend(_close(n_train=LARGE_PER_CLASS * 10))
    assert rec.strategy == "discriminative"
    assert rec.lr["block4"] == pytest.approx(0.05 / DISCRIMINATIVE_FACTOR)
    assert rec.lr["block1"] == pytest.approx(0.05 / DISCRIMINATIVE_FACTOR**4)


def test_large_target_with_an_output_level_shift_still_fits_the_head_first():
    res = _results([0.6, 0.8, 0.7, 0.55], [0.4] * 4, [0.1] * 4, n_train=LARGE_PER_CLASS * 10)
    assert recommend(res).strategy == "lp_ft"
    assert recommend(_close(n_train=LARGE_PER_CLASS * 10 - 10)).strategy == "lp_ft"


# Rule 5: output-level shift and close targets -> LP-FT.
def test_output_level_shift_fits_the_head_before_tuning():
    res = _results([0.6, 0.8, 0.7, 0.55], [0.4] * 4, [0.1, 0.1, 0.2, 0.3])
    rec = recommend(res)
    assert rec.strategy == "lp_ft" and rec.confidence == "medium"
    assert rec.unfreeze == tuple(BLOCKS)
    assert any("peaks at block2 (0.800)" in r and "0.550" in r for r in rec.reasons)
    assert any("Kumar et al. 2022" in r for r in rec.reasons)


def test_close_target_without_a_late_drop_is_high_confidence_lp_ft():
    rec = recommend(_close())
    assert rec.strategy == "lp_ft" and rec.confidence == "high"
    assert any("A close target" in r for r in rec.reasons)


# The control probe: pretraining that buys nothing lowers the confidence.
def test_no_pretraining_benefit_gives_low_confidence():
    res = _results([0.5, 0.6, 0.6, 0.6], [0.5, 0.6, 0.6, 0.61], [0.2, 0.3, 0.4, 0.5])
    rec = recommend(res)
    assert rec.confidence == "low"
    # The control is 0.010 better: said plainly, never as "within -0.010".
    assert any(
        "0.010 below the random-init control's (0.610): the control is better" in r
        for r in rec.reasons
    )
    assert not any("within -" in r for r in rec.reasons)
    assert any("beating the control" in w for w in rec.would_change_if)


def test_pretraining_benefit_is_cited():
    rec = recommend(_close())
    assert rec.confidence != "low"
    assert any("beats the random-init control (0.500) by 0.450" in r for r in rec.reasons)


def test_missing_lr_find_falls_back_and_says_so():
    res = _close()
    res["lr_find"] = None
    rec = recommend(res)
    assert rec.lr["head"] == pytest.approx(1e-2)
    assert "no suggestion" in rec.reasons[0]


def test_no_target_probes_gives_low_confidence_full_fine_tuning():
    rec = recommend({"layers": [{"name": "a", "probe": {"target": None}}], "lr_find": {}})
    assert rec.strategy == "full_low_lr" and rec.confidence == "low"


@pytest.mark.parametrize(
    "res",
    [
        _close(),
        _close(n_train=100),
        _close(n_train=6000),
        _noisy(),
        _noisy(source_classes=False),
        _results([0.6, 0.8, 0.7, 0.55], [0.4] * 4, [0.1] * 4),
    ],
    ids=["close", "small", "large", "input-loss", "input-no-source", "output"],
)
def test_pure_function_and_contract(res):
    before = copy.deepcopy(res)
    rec = recommend(res)
    assert res == before  # no mutation
    assert recommend(res) == rec  # deterministic
    assert rec.strategy in STRATEGIES
    assert rec.confidence in {"low", "medium", "high"}
    assert 5 <= rec.epochs <= 50
    assert rec.would_change_if, "every decision says what would flip it"
    # Every reason after the LR one cites a measured value (LP-FT's own rationale aside).
    cited = [r for r in rec.reasons[1:] if not r.startswith("LP-FT fits")]
    assert cited and all(re.search(r"\d\.\d", r) for r in cited), cited
    assert set(rec.lr) == {"head", *rec.unfreeze}


def test_assess_passes_the_forgetting_budget_to_the_recommendation(loaded_demo, tmp_path, capsys):
    from diagnose.cli import main

    code = main(
        [
            "assess",
            "--model",
            "demo",
            "--source",
            "demo:digits",
            "--target",
            "demo:digits-noise",
            "--max-samples",
            "300",
            "--max-forgetting",
            "0.01",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rec = json.loads((tmp_path / "results.json").read_text())["recommendation"]
    assert rec["strategy"] == "feature_extraction" and rec["max_forgetting"] == 0.01
    assert "forgetting budget" in (tmp_path / "report.html").read_text()


def test_cli_rejects_a_forgetting_budget_outside_0_1(capsys):
    from diagnose.cli import main

    with pytest.raises(SystemExit) as code:
        main(
            ["assess", "--model", "demo", "--target", "demo:digits", "--max-forgetting", "2",
             "--quiet"]
        )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 2 and len(err) == 1
    assert "--max-forgetting: must be a number in [0, 1]" in err[0]


def test_the_rules_read_the_training_defaults_and_the_plan_s_lrs():
    from diagnose.decide.recipe import OPTIMIZER, group_lrs
    from diagnose.measure.lr_find import LR_TEST_MOMENTUM
    from diagnose.training import TrainConfig, plan

    defaults = TrainConfig()
    assert OPTIMIZER == f"SGD, momentum {defaults.momentum:g}"
    assert LR_TEST_MOMENTUM == defaults.momentum  # the range test tunes the same SGD
    blocks = ["b1", "b2", "b3"]
    main = plan("discriminative", blocks, TrainConfig(head_lr=0.026)).stages[-1].lr
    assert group_lrs("discriminative", blocks, blocks, 0.026) == dict(main)
    assert group_lrs("partial", blocks, ["b3"], 0.02) == {"head": 0.02, "b3": 0.02 * 0.1}
    assert group_lrs("feature_extraction", blocks, [], 0.02) == {"head": 0.02}
