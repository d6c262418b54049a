"""BitFit's parameters, LoRA's targets (peft), and the plain view of an adapted model.

Known values: BitFit's trainable count is the sum of the biases and norm parameters,
counted here from the modules; LoRA's targets on a torchvision ResNet are its 2-D
convolutions of the chosen blocks, on a timm ViT ``qkv``, ``proj``, ``fc1``, ``fc2``.
The merged view is checked against peft's own ``merge_and_unload`` (an independent
implementation) and against the adapted model's outputs.
"""

from __future__ import annotations

import builtins
import copy

import pytest
import torch
import torchvision
from tiny_models import Tiny
from torch import nn

from diagnose.models import (
    apply_lora,
    base_model_of,
    bias_and_norm,
    effective_parameters,
    import_peft,
    is_lora_parameter,
    lora_targets,
    merged_state_dict,
)

peft = pytest.importorskip("peft", reason="LoRA needs the optional peft extra")

RESNET_BLOCKS = ["layer1", "layer2", "layer3", "layer4"]
# Merged weights are float32 sums W + B A s: outputs agree to float32 rounding.
F32 = 1e-5


def test_bitfit_selects_biases_and_norm_parameters():
    model = torchvision.models.resnet18(num_classes=3)
    names = [n for n, _ in model.named_parameters() if n.startswith("layer2")]
    kept = bias_and_norm(model, names)
    norms = {
        n: m
        for n, m in model.named_modules()
        if n.startswith("layer2") and isinstance(m, nn.BatchNorm2d)
    }
    # ResNet convolutions have no bias: BitFit is exactly the BatchNorm affine pairs here.
    assert sum(dict(model.named_parameters())[n].numel() for n in kept) == sum(
        m.weight.numel() + m.bias.numel() for m in norms.values()
    )
    assert {n.rsplit(".", 1)[0] for n in kept} == set(norms)


def test_bitfit_keeps_linear_biases_and_layer_norms():
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2, bias=False))
    names = [n for n, _ in model.named_parameters()]
    assert bias_and_norm(model, names) == ["0.bias", "1.weight", "1.bias"]


def test_lora_targets_a_resnet_s_convolutions_of_the_chosen_blocks():
    model = torchvision.models.resnet18(num_classes=3)
    found = lora_targets(model, RESNET_BLOCKS, "fc", adapted=["layer4"])
    expected = [
        n for n, m in model.named_modules() if n.startswith("layer4.") and isinstance(m, nn.Conv2d)
    ]
    assert found == expected and "fc" not in found
    assert lora_targets(model, RESNET_BLOCKS, "fc", adapted=["layer4"], targets=["conv1"]) == [
        "layer4.0.conv1",
        "layer4.1.conv1",
    ]
    with pytest.raises(ValueError, match=r"LoRA target 'conv9' names no nn.Linear.*Close matches"):
        lora_targets(model, RESNET_BLOCKS, "fc", targets=["conv9"])


def test_lora_targets_a_timm_vit_s_attention_and_mlp():
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8
    )
    blocks = [f"blocks.{i}" for i in range(len(model.blocks))]
    found = lora_targets(model, blocks, "head", adapted=blocks[-1:])
    assert sorted(n.rsplit(".", 1)[-1] for n in found) == ["fc1", "fc2", "proj", "qkv"]


def test_depthwise_convolutions_are_left_out():
    model = torchvision.models.mobilenet_v3_small(num_classes=3)
    blocks = [f"features.{i}" for i in range(len(model.features))]
    found = lora_targets(model, blocks, "classifier.3")
    mods = dict(model.named_modules())
    assert found and all(isinstance(mods[n], (nn.Linear, nn.Conv2d)) for n in found)
    assert all(getattr(mods[n], "groups", 1) == 1 for n in found)
    assert "classifier.3" not in found


def test_no_layer_to_adapt_says_which_flag_to_pass():
    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"pass the layers to adapt as lora_targets=a,b") as err:
        lora_targets(model, ["0", "1"], "2")
    assert err.value.in_flag_words().endswith("pass the layers to adapt as --lora-targets a,b.")


def _adapted_tiny(rank=2):
    torch.manual_seed(0)
    model = Tiny(classes=3).eval()
    plain = copy.deepcopy(model)
    targets = lora_targets(model, ["block1", "block2", "block3"], "head")
    adapted = apply_lora(model, targets, rank=rank, alpha=4.0, head="head")
    with torch.no_grad():  # B starts at zero: move every trainable tensor so the update shows
        for p in adapted.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return plain, adapted


def test_the_merged_state_dict_equals_the_adapter_applied():
    plain, adapted = _adapted_tiny()
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        want = adapted(x)
        plain.load_state_dict(merged_state_dict(adapted), strict=True)
        assert torch.allclose(plain(x), want, atol=F32)
        merged = copy.deepcopy(adapted).merge_and_unload()  # peft's own merge
        for name, value in merged.state_dict().items():
            assert torch.allclose(merged_state_dict(adapted)[name], value, atol=F32), name


def test_effective_parameters_of_a_plain_model_are_its_parameters():
    model = Tiny()
    eff = effective_parameters(model)
    assert list(eff) == [n for n, _ in model.named_parameters()]
    assert all(torch.equal(eff[n], p) for n, p in model.named_parameters())
    assert base_model_of(model) is model
    assert not any(is_lora_parameter(n) for n, _ in model.named_parameters())


def test_a_peft_model_is_seen_through_to_the_network():
    plain, adapted = _adapted_tiny()
    assert base_model_of(adapted) is adapted.get_base_model()
    assert any(is_lora_parameter(n) for n, _ in adapted.named_parameters())
    assert set(effective_parameters(adapted)) == {n for n, _ in plain.named_parameters()}


def test_without_peft_lora_is_one_line_naming_the_extra(monkeypatch):
    real = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(ImportError) as info:
        import_peft()
    assert str(info.value) == (
        "The 'lora' strategy needs the peft library: pip install 'transfer-diagnose[peft]'."
    )


def test_bitfit_trains_attention_biases_and_lora_skips_what_attention_reads_directly():
    v = torchvision.models.vit_b_16(num_classes=3, image_size=32)
    names = [n for n, _ in v.named_parameters() if n.startswith("encoder.layers.encoder_layer_0.")]
    kept = bias_and_norm(v, names)
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_bias" in kept
    assert "encoder.layers.encoder_layer_0.self_attention.in_proj_weight" not in kept
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    found = lora_targets(v, blocks, "heads.head", adapted=blocks[:1])
    # MultiheadAttention reads out_proj.weight itself: an adapter there would never train.
    assert not any(n.endswith("out_proj") for n in found) and found


class _Standardised(nn.Conv2d):
    """A weight-standardising 1x1 convolution (timm's StdConv2d): not padding only."""

    def forward(self, x):
        w = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
        return nn.functional.conv2d(x, w, self.bias)


def test_a_convolution_that_changes_its_weight_is_not_adapted():
    model = nn.Sequential(_Standardised(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    assert lora_targets(model, ["0", "1"], "3") == ["1"]


def test_the_merged_state_dict_has_the_plain_keys_without_non_persistent_buffers():
    plain, adapted = _adapted_tiny()
    adapted.get_base_model().block1.register_buffer("scratch", torch.zeros(2), persistent=False)
    plain.block1.register_buffer("scratch", torch.zeros(2), persistent=False)
    merged = merged_state_dict(adapted)
    assert set(merged) == set(plain.state_dict())
    plain.load_state_dict(merged, strict=True)


def test_saving_an_adapter_replaces_the_previous_one_whole(tmp_path):
    from diagnose.models import save_adapter

    _, first = _adapted_tiny(rank=2)
    _, second = _adapted_tiny(rank=3)
    path = save_adapter(first, tmp_path / "lora_adapter")
    (path / "stale.txt").write_text("from an earlier run")
    save_adapter(second, path)
    assert not (path / "stale.txt").exists()
    assert '"r": 3' in (path / "adapter_config.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora_adapter"]  # no temporary left

    def broken(tmp):
        raise OSError("disk full")

    from diagnose.core import atomic_write_dir

    with pytest.raises(OSError, match="disk full"):
        atomic_write_dir(broken, path)
    assert '"r": 3' in (path / "adapter_config.json").read_text()  # the previous one stays


class Conv2dStaticSamePadding(nn.Conv2d):
    """TensorFlow-style "same" padding as EfficientNet ports write it: its own constructor
    (which peft cannot call) and a forward that pads first (nothing at 1x1)."""

    def __init__(self, c_in, c_out, k, image_size):
        super().__init__(c_in, c_out, k, bias=False)
        self.pad = nn.ZeroPad2d((k - 1) // 2)

    def forward(self, x):
        return super().forward(self.pad(x))


def test_self_padding_pointwise_convolutions_are_adapted_and_audited(tmp_path):
    from diagnose.models import save_adapter
    from diagnose.workflows.checkpoint_audit import build_finetuned

    torch.manual_seed(0)
    model = nn.Sequential(
        Conv2dStaticSamePadding(3, 4, 3, image_size=8), Conv2dStaticSamePadding(4, 4, 1, image_size=8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()  # fmt: skip
    original = copy.deepcopy(model)
    targets = lora_targets(model, ["0", "1"], "4")
    assert targets == ["1"]  # the 3x3 one pads: an update would see another input
    adapted = apply_lora(model, targets, rank=2, alpha=4.0, head="4")
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want = adapted(x)
        torch.save(merged_state_dict(adapted), tmp_path / "merged.pt")
        save_adapter(adapted, tmp_path / "adapter")
        for path in (tmp_path / "merged.pt", tmp_path / "adapter"):
            ft, _ = build_finetuned(original, "4", path)
            assert torch.allclose(ft(x), want, atol=F32), path
        assert not torch.allclose(original(x), want, atol=F32)  # the update is there
