"""BitFit and LoRA through run_strategy: what trains (counted), what stays, what is saved.

Known values: BitFit's trainable parameters are the biases and norm parameters of every
block plus the new head, counted from the modules; LoRA's are r (fan_in + fan_out) per
adapted layer (A is r x fan_in, B is fan_out x r, kernels included) plus the head. LoRA
leaves every base weight and every BatchNorm statistic bit-identical; the merged
checkpoint and the adapter directory give the same outputs.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import Tiny, single_thread
from torch import nn

from diagnose.measure.forgetting import ForgettingMeter
from diagnose.models import adapter_dir_for
from diagnose.training.config import TrainConfig
from diagnose.training.runner import TargetData, run_strategy
from diagnose.workflows.checkpoint_audit import build_finetuned

BLOCKS = ["block1", "block2", "block3"]
CPU = torch.device("cpu")
# Merged float32 weights against the adapter applied: float32 rounding of W + B A s.
F32 = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def pretrained():
    torch.manual_seed(0)
    model = Tiny(classes=4)
    x = torch.randn(64, 1, 8, 8)
    y = torch.arange(64) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(10):  # real BN statistics and a source head
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(2)

    def split(n):
        y = torch.arange(n) % 3
        x = torch.randn(n, 1, 8, 8, generator=gen) + y.view(-1, 1, 1, 1).float()
        return x, y

    return TargetData(*split(48), *split(24), *split(24), num_classes=3)


@pytest.fixture(scope="module")
def tracker(pretrained):
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = pretrained(x).argmax(1)
    return ForgettingMeter(
        pretrained, head="head", blocks=BLOCKS, source_x=x, source_y=y, device=CPU, batch_size=16
    )


def _run(name, model, data, tracker=None, checkpoint_path=None, **kw):
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 16, "head_lr": 0.05, **kw})
    return run_strategy(
        name, model, head="head", blocks=BLOCKS, data=data, tracker=tracker, config=cfg,
        device=CPU, progress=False, checkpoint_path=checkpoint_path,
    )  # fmt: skip


def _head_params(model):
    return model.head.in_features * 3 + 3  # the new 3-class head trains in full


def test_bitfit_trains_biases_and_norms_only(pretrained, data, tracker, tmp_path):
    path = tmp_path / "bitfit.pt"
    entry = _run("bitfit", pretrained, data, tracker, checkpoint_path=str(path))
    norms = [m for m in pretrained.modules() if isinstance(m, nn.BatchNorm2d)]
    counted = sum(m.weight.numel() + m.bias.numel() for m in norms)  # Tiny's convs: no bias
    assert entry["status"] == "ok" and entry["config"]["trained_params"] == "bias_norm"
    assert entry["cost"]["trainable_params"] == counted + _head_params(pretrained)
    state, ref = torch.load(path, weights_only=True), pretrained.state_dict()
    for key in ref:
        if key.endswith(".0.weight"):  # every convolution stays as it was
            assert torch.equal(state[key], ref[key]), key
    assert any(not torch.equal(state[f"{b}.1.weight"], ref[f"{b}.1.weight"]) for b in BLOCKS)


def test_lora_trains_the_low_rank_update_and_the_head_only(pretrained, data, tracker, tmp_path):
    pytest.importorskip("peft")
    path = tmp_path / "lora.pt"
    entry = _run(
        "lora", pretrained, data, tracker, checkpoint_path=str(path), lora_rank=2, bn="train"
    )
    convs = [m for n, m in pretrained.named_modules() if isinstance(m, nn.Conv2d)]
    counted = sum(
        2 * m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels * 2 for m in convs
    )
    assert entry["cost"]["trainable_params"] == counted + _head_params(pretrained)
    assert entry["config"]["lora"]["layers"] == ["block1.0", "block2.0", "block3.0"]
    assert entry["config"]["bn"] == "frozen"  # LoRA never moves BatchNorm statistics
    json.dumps(entry, allow_nan=False)
    merged, ref = torch.load(path, weights_only=True), pretrained.state_dict()
    assert set(merged) == set(ref)  # the plain architecture's keys
    for key in ref:
        if "running" in key or key.endswith(".1.weight") or key.endswith(".1.bias"):
            assert torch.equal(merged[key], ref[key]), key
    assert all(entry["forgetting"]["weight_drift"][b] > 0 for b in BLOCKS)
    assert adapter_dir_for(path).joinpath("adapter_config.json").is_file()


def test_the_adapter_directory_and_the_merged_checkpoint_agree(pretrained, data, tmp_path):
    pytest.importorskip("peft")
    path = tmp_path / "lora.pt"
    _run("lora", pretrained, data, checkpoint_path=str(path), lora_rank=2)
    from_state, replaced = build_finetuned(pretrained, "head", path)
    from_adapter, replaced_too = build_finetuned(pretrained, "head", adapter_dir_for(path))
    assert replaced and replaced_too  # a 3-class head in place of the 4-class source head
    x = data.x_test
    with torch.no_grad():
        assert torch.allclose(from_state(x), from_adapter(x), atol=F32)


def test_lora_on_the_last_block_leaves_the_others_untouched(pretrained, data, tracker):
    pytest.importorskip("peft")
    before = copy.deepcopy(pretrained.state_dict())
    entry = _run("lora", pretrained, data, tracker, adapted_blocks=["block3"], lora_rank=2)
    drift = entry["forgetting"]["weight_drift"]
    assert drift["block1"] == 0.0 and drift["block2"] == 0.0 and drift["block3"] > 0
    assert entry["config"]["frozen"] == ["block1", "block2"]
    assert all(torch.equal(v, before[k]) for k, v in pretrained.state_dict().items())


def test_lora_targets_can_be_named(pretrained, data):
    pytest.importorskip("peft")
    entry = _run("lora", pretrained, data, lora_targets=["block2.0"], lora_rank=1)
    assert entry["config"]["lora"]["layers"] == ["block2.0"]
    with pytest.raises(ValueError, match=r"LoRA target 'conv' names no"):
        _run("lora", pretrained, data, lora_targets=["conv"])


@pytest.mark.parametrize("name", ["lora", "bitfit"])
def test_a_timm_vit_trains_with_lora_and_bitfit(name):
    timm = pytest.importorskip("timm")
    if name == "lora":
        pytest.importorskip("peft")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32,
                            patch_size=8, depth=2).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32, generator=g), torch.arange(24) % 3
    data = TargetData(x[:12], y[:12], x[12:18], y[12:18], x[18:], y[18:], num_classes=3)
    entry = run_strategy(
        name, vit, head="head", blocks=["blocks.0", "blocks.1"], data=data, tracker=None,
        config=TrainConfig(epochs=1, batch_size=6, head_lr=0.01), device=CPU, progress=False,
    )  # fmt: skip
    assert entry["status"] == "ok", entry.get("message")
    if name == "lora":  # attention and MLP of both blocks, and the patch embedding (the stem)
        layers = entry["config"]["lora"]["layers"]
        assert sorted({n.rsplit(".", 1)[-1] for n in layers}) == ["fc1", "fc2", "proj", "qkv"]
