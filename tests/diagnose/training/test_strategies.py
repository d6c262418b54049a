"""Strategy plans (pure) and the assignment of parameters to block groups."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from diagnose.core.names import STRATEGY_NAMES
from diagnose.models.demo_cnn import DemoCNN
from diagnose.models.groups import parameter_groups
from diagnose.training.config import TrainConfig
from diagnose.training.strategies import Plan
from diagnose.training.strategies import plan as typed_plan


def plan(name, blocks, config) -> dict:
    """The plan as results.json records it: the assertions below read that form."""
    return typed_plan(name, blocks, config).to_dict()


BLOCKS = ["b1", "b2", "b3", "b4"]
RESNET_BLOCKS = ["maxpool", "layer1", "layer2", "layer3", "layer4"]


def test_names_are_the_contract():
    assert STRATEGY_NAMES == (
        "feature_extraction",
        "partial",
        "full_low_lr",
        "discriminative",
        "gradual_unfreeze",
        "lp_ft",
        "l2_sp",
        "bitfit",
        "lora",
        "scratch",
    )


def test_unknown_strategy_lists_the_names():
    with pytest.raises(
        ValueError,
        match=r"Unknown strategy 'lpft'\. Choose one of: feature_extraction, partial, full_low_lr, "
        r"discriminative, gradual_unfreeze, lp_ft, l2_sp, bitfit, lora, scratch\. Did you mean 'lp_ft'\?",
    ):
        plan("lpft", BLOCKS, TrainConfig())


def test_discriminative_lr_is_head_over_factor_power_depth():
    cfg = TrainConfig(head_lr=0.03)
    lr = plan("discriminative", BLOCKS, cfg)["stages"][0]["lr"]
    assert lr["head"] == 0.03
    for depth, block in enumerate(reversed(BLOCKS), start=1):
        assert lr[block] == 0.03 / 2.6**depth
    assert lr["b1"] < lr["b2"] < lr["b3"] < lr["b4"] < lr["head"]
    custom = plan("discriminative", BLOCKS, TrainConfig(head_lr=1.0, discriminative_factor=2.0))
    assert custom["stages"][0]["lr"]["b1"] == 1 / 16


@pytest.mark.parametrize("ratio", [0.1, 0.01])
def test_full_low_lr_and_l2_sp_use_the_backbone_ratio(ratio):
    cfg = TrainConfig(head_lr=0.05, backbone_ratio=ratio, l2_sp_alpha=0.3)
    for name in ("full_low_lr", "l2_sp"):
        p = plan(name, BLOCKS, cfg)
        (stage,) = p["stages"]
        assert stage["trainable"] == [*BLOCKS, "head"]
        assert stage["lr"] == {**dict.fromkeys(BLOCKS, 0.05 * ratio), "head": 0.05}
        assert p["frozen"] == [] and p["init"] == "pretrained"
    assert plan("full_low_lr", BLOCKS, cfg)["penalty"] is None
    assert plan("l2_sp", BLOCKS, cfg)["penalty"] == {"kind": "l2_sp", "alpha": 0.3}


def test_partial_trains_only_the_given_blocks():
    p = plan("partial", BLOCKS, TrainConfig(unfreeze=["b3", "b4"], head_lr=0.1))
    (stage,) = p["stages"]
    assert stage["trainable"] == ["b3", "b4", "head"]
    assert stage["lr"] == {"b3": 0.1 * 0.1, "b4": 0.1 * 0.1, "head": 0.1}
    assert p["frozen"] == ["b1", "b2"]
    default = plan("partial", BLOCKS, TrainConfig())
    assert default["stages"][0]["trainable"] == ["b4", "head"]
    with pytest.raises(
        ValueError, match=r"'unfreeze' parameter of TrainConfig must name blocks among"
    ):
        plan("partial", BLOCKS, TrainConfig(unfreeze=["b9"]))


def test_gradual_unfreeze_adds_one_block_per_stage_from_the_top():
    cfg = TrainConfig(head_lr=0.026)
    p = plan("gradual_unfreeze", BLOCKS, cfg)
    stages = p["stages"]
    assert len(stages) == len(BLOCKS) + 1
    assert [s["trainable"] for s in stages] == [
        ["head"],
        ["b4", "head"],
        ["b3", "b4", "head"],
        ["b2", "b3", "b4", "head"],
        ["b1", "b2", "b3", "b4", "head"],
    ]
    assert [s["until_step_fraction"] for s in stages] == [k / 5 for k in range(1, 6)]
    disc = plan("discriminative", BLOCKS, cfg)["stages"][0]["lr"]
    for s in stages:
        assert s["lr"] == {g: disc[g] for g in s["trainable"]}
    assert p["frozen"] == []


def test_lp_ft_has_a_probe_stage_then_a_low_lr_fine_tuning_stage():
    p = plan("lp_ft", BLOCKS, TrainConfig(head_lr=0.2, lp_epochs=7, epochs=4))
    lp, ft = p["stages"]
    assert lp == {
        "epochs": 7,
        "trainable": ["head"],
        "lr": {"head": 0.2},
        "on_cached_features": True,
    }
    assert ft["epochs"] == 4 and ft["trainable"] == [*BLOCKS, "head"]
    assert set(ft["lr"].values()) == {0.2 * 0.1}
    assert p["cached_features"] is True


def test_feature_extraction_and_scratch():
    fe = plan("feature_extraction", BLOCKS, TrainConfig())
    assert fe["frozen"] == BLOCKS and fe["cached_features"] is True
    assert fe["stages"][0]["trainable"] == ["head"]
    sc = plan("scratch", BLOCKS, TrainConfig(head_lr=0.3))
    assert sc["init"] == "random" and set(sc["stages"][0]["lr"].values()) == {0.3}


def test_plan_is_pure_and_json():
    cfg = TrainConfig(unfreeze=["b2"])
    before = cfg.to_dict()
    for name in STRATEGY_NAMES:
        json.dumps(plan(name, BLOCKS, cfg), allow_nan=False)
    assert cfg.to_dict() == before
    assert json.loads(json.dumps(cfg.to_dict())) == before


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("bn", "eval", r"The 'bn' parameter of TrainConfig must be one of"),
        ("epochs", 0, r"The 'epochs' parameter of TrainConfig must be a positive int"),
        (
            "head_lr",
            float("nan"),
            r"The 'head_lr' parameter of TrainConfig must be a positive finite",
        ),
        (
            "weight_decay",
            -1.0,
            r"The 'weight_decay' parameter of TrainConfig must be a finite number >= 0",
        ),
    ],
)
def test_invalid_config(field, value, match):
    cfg = TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=match):
        plan("full_low_lr", BLOCKS, cfg)


def _assert_partition(model, groups):
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))


def test_parameter_groups_resnet18():
    model = torchvision.models.resnet18()
    groups = parameter_groups(model, RESNET_BLOCKS, "fc")
    _assert_partition(model, groups)
    assert list(groups) == [*RESNET_BLOCKS, "head"]
    assert groups["maxpool"] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert groups["head"] == ["fc.weight", "fc.bias"]
    for layer in RESNET_BLOCKS[1:]:
        assert all(n.startswith(layer + ".") for n in groups[layer])


def test_parameter_groups_demo_cnn():
    model = DemoCNN()
    blocks = ["block1", "block2", "block3", "block4"]
    groups = parameter_groups(model, blocks, "head")
    _assert_partition(model, groups)
    for b in blocks:
        assert groups[b] == [n for n, _ in model.named_parameters() if n.startswith(b + ".")]


class _Odd(nn.Module):
    """Parameters on the root, between blocks and after the last block."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(3))
        self.stem = nn.Linear(3, 3)
        self.a = nn.Linear(3, 3)
        self.mid = nn.LayerNorm(3)
        self.b = nn.Linear(3, 3)
        self.final_norm = nn.LayerNorm(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.final_norm(self.b(self.mid(self.a(self.stem(x + self.token))))))


def test_parameter_groups_outside_blocks_go_to_the_next_block():
    model = _Odd()
    groups = parameter_groups(model, ["a", "b"], "fc")
    _assert_partition(model, groups)
    assert groups["a"] == ["token", "stem.weight", "stem.bias", "a.weight", "a.bias"]
    assert groups["b"] == [
        "mid.weight",
        "mid.bias",
        "b.weight",
        "b.bias",
        "final_norm.weight",
        "final_norm.bias",
    ]
    assert groups["head"] == ["fc.weight", "fc.bias"]


def test_parameter_groups_unknown_names():
    model = DemoCNN()
    with pytest.raises(
        ValueError, match=r"block 'blok2' is not a module of DemoCNN\. Close matches: block2"
    ):
        parameter_groups(model, ["block1", "blok2"], "head")
    with pytest.raises(ValueError, match=r"head 'fc' is not a module of DemoCNN"):
        parameter_groups(model, ["block1"], "fc")
    with pytest.raises(ValueError, match=r"cannot also be a block"):
        parameter_groups(model, ["block1", "head"], "head")


def test_the_engine_reads_how_to_run_a_plan_from_its_fields():
    cfg = TrainConfig(unfreeze=["b3", "b4"])
    routes = {n: typed_plan(n, BLOCKS, cfg) for n in STRATEGY_NAMES}
    assert all(isinstance(p, Plan) for p in routes.values())
    assert {n: p.route for n, p in routes.items()} == {
        "feature_extraction": "head",
        "partial": "tune",
        "full_low_lr": "tune",
        "discriminative": "tune",
        "gradual_unfreeze": "tune",
        "lp_ft": "probe_then_tune",
        "l2_sp": "tune",
        "bitfit": "tune",
        "lora": "tune",
        "scratch": "tune",
    }
    assert {n: p.params for n, p in routes.items() if p.params != "all"} == {
        "bitfit": "bias_norm",
        "lora": "lora",
    }
    # LoRA on the last two blocks only: the two below never change, so they may be cached.
    lora_top = typed_plan("lora", BLOCKS, TrainConfig(adapted_blocks=BLOCKS[-2:]))
    assert lora_top.frozen == tuple(BLOCKS[:-2]) and lora_top.frozen_prefix_cache
    assert lora_top.lora == {"rank": 8, "alpha": 16.0, "targets": None}
    # Only a single stage with blocks frozen throughout may cache the frozen prefix.
    assert [n for n, p in routes.items() if p.frozen_prefix_cache] == ["partial"]
    assert [n for n, p in routes.items() if p.staged] == ["gradual_unfreeze"]
    assert typed_plan("partial", BLOCKS, TrainConfig(unfreeze=BLOCKS)).frozen_prefix_cache is False
    with pytest.raises(AttributeError):  # frozen: the engine cannot change a plan
        routes["partial"].route = "head"
