"""Tests of probes.capture: layer discovery, pooling, hooks hygiene, data handling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.models.vision_transformer import VisionTransformer

from probes.capture import CapturedFeatures, capture, discover_layers


def _f32_atol(ref: np.ndarray) -> float:
    """Float32 absolute tolerance: ~1e-6 relative to the largest |value| (at least 1e-6).

    For float32 results of the same computation done in different batch sizes,
    thread counts or processes, where the summation order may differ.
    """
    return 1e-6 * max(1.0, float(np.abs(ref).max(initial=0.0)))


# ----------------------------------------------------------------------------- models


class DemoCNN(nn.Module):
    """Shaped like the project's demo CNN: block1..block4 then a linear head."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.block1 = block(1, 4)
        self.block2 = block(4, 8)
        self.block3 = block(8, 8)
        self.block4 = block(8, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head(self.pool(x).flatten(1))


class ReusedReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 3)
        self.fc2 = nn.Linear(3, 2)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.bn(self.fc(x))
        raise RuntimeError("boom inside forward")


class WithAux(nn.Module):
    """An auxiliary branch registered but only run in training, like GoogLeNet's aux heads."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.aux = nn.Linear(4, 2)
        self.trunk = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if self.training:
            self.aux(h)
        return self.head(self.trunk(h))


def conv_1to2() -> nn.Sequential:
    """1x1 conv with channel weights (+1, -1) and no bias: channel 0 = x, channel 1 = -x."""
    conv = nn.Conv2d(1, 2, kernel_size=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    return nn.Sequential(conv)


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64
    )


def all_hooks_removed(model: nn.Module) -> bool:
    return all(len(m._forward_hooks) == 0 for m in model.modules())


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18()


@pytest.fixture(scope="module")
def vit_b_16() -> nn.Module:
    return torchvision.models.vit_b_16()


# ----------------------------------------------------------------------------- discovery


def test_discover_resnet18(resnet18: nn.Module) -> None:
    assert discover_layers(resnet18) == ["maxpool", "layer1", "layer2", "layer3", "layer4"]


def test_discover_mobilenet_v3_small() -> None:
    model = torchvision.models.mobilenet_v3_small()
    assert discover_layers(model) == [f"features.{i}" for i in range(len(model.features))]


def test_discover_vit_b_16(vit_b_16: nn.Module) -> None:
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    assert discover_layers(vit_b_16) == [*blocks, "encoder.ln"]


def test_discover_sequential_reads_post_activation_and_drops_classifier() -> None:
    mlp = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3)
    )
    assert discover_layers(mlp) == ["1", "4"]
    convs = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3)
    )
    assert discover_layers(convs) == ["3", "4"]
    # A lone Linear is the only block, so it is kept.
    assert discover_layers(nn.Sequential(nn.Linear(2, 2))) == ["0"]


def test_discover_demo_cnn_and_wrappers() -> None:
    assert discover_layers(DemoCNN()) == ["block1", "block2", "block3", "block4"]

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = DemoCNN()
            self.drop = nn.Dropout()

    names = discover_layers(Wrapper())
    assert names == [f"backbone.block{i}" for i in range(1, 5)]

    class Stacked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(2, 4)
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
            self.act = nn.ReLU()
            self.head = nn.Sequential(nn.Dropout(), nn.Linear(4, 2))

    assert discover_layers(Stacked()) == ["stem", "blocks.0", "blocks.1", "blocks.2"]


def test_discover_feature_layers_escape_hatch() -> None:
    model = DemoCNN()
    model.feature_layers = ["block2.2", "block4"]
    assert discover_layers(model) == ["block2.2", "block4"]
    model.feature_layers = ["block9"]
    with pytest.raises(ValueError, match="'block9' is not a module"):
        discover_layers(model)


# ----------------------------------------------------------------------------- pooling values


def ramp_inputs(n: int) -> torch.Tensor:
    """(n, 1, 2, 2) inputs: example i is (i + 1) * [[0, 1], [2, 3]]."""
    base = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    return torch.stack([(i + 1) * base for i in range(n)]).unsqueeze(1)


@pytest.mark.parametrize(
    ("pool", "expected_row"),
    [
        ("avg", lambda s: [1.5 * s, -1.5 * s]),
        ("max", lambda s: [3.0 * s, 0.0]),
        ("avgmax", lambda s: [1.5 * s, -1.5 * s, 3.0 * s, 0.0]),
        (1, lambda s: [1.5 * s, -1.5 * s]),
        (2, lambda s: [0.0, s, 2 * s, 3 * s, 0.0, -s, -2 * s, -3 * s]),
    ],
)
def test_conv_pooling_known_values(pool, expected_row) -> None:
    feats = capture(conv_1to2(), ramp_inputs(3), ["0"], pool=pool, batch_size=2, progress=False)
    expected = np.array([expected_row(i + 1) for i in range(3)], dtype=np.float32)
    assert feats["0"].dtype == np.float32
    np.testing.assert_allclose(feats["0"], expected, atol=1e-6)
    assert feats.pooling["pool"] == pool


def test_token_pooling_mean_and_cls() -> None:
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(4))
        lin.bias.zero_()
    model = nn.Sequential(lin)
    x = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(1))
    mean = capture(model, x, ["0"], token_pool="mean", progress=False)["0"]
    cls = capture(model, x, ["0"], token_pool="cls", progress=False)["0"]
    np.testing.assert_allclose(mean, x.mean(1).numpy(), atol=1e-6)
    np.testing.assert_allclose(cls, x[:, 0].numpy(), atol=1e-6)


def test_sequence_first_outputs_are_recognised() -> None:
    class SeqFirst(nn.Module):  # (T, N, D) like batch_first=False attention
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.transpose(0, 1)

    model = nn.Sequential(SeqFirst())
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(
        capture(model, x, ["0"], token_pool="cls", progress=False)["0"], x[:, 0].numpy()
    )


def test_tuple_outputs_use_first_tensor_and_other_ranks_flatten() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor):
            return (x * 2, "ignored")

    model = nn.Sequential(Pair())
    x = torch.arange(2 * 2 * 2 * 2 * 2, dtype=torch.float32).view(2, 2, 2, 2, 2)
    out = capture(model, x, ["0"], progress=False)["0"]
    np.testing.assert_array_equal(out, (2 * x).reshape(2, -1).numpy())


def test_inplace_relu_after_hooked_layer_does_not_corrupt() -> None:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        lin.bias.copy_(torch.tensor([-5.0, 0.0]))
    model = nn.Sequential(lin, nn.ReLU(inplace=True))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    feats = capture(model, x, ["0", "1"], progress=False)
    np.testing.assert_array_equal(feats["0"], [[-4.0, -2.0], [-2.0, -4.0]])
    np.testing.assert_array_equal(feats["1"], [[0.0, 0.0], [0.0, 0.0]])


# ----------------------------------------------------------------------------- real models


def test_resnet18_dims_and_values_match_manual_forward(resnet18: nn.Module) -> None:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats = capture(resnet18, x, batch_size=2, progress=False)
    assert feats.dims == {"maxpool": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    assert feats.n == 3 and feats.labels is None
    resnet18.eval()
    with torch.no_grad():
        h = resnet18.maxpool(resnet18.relu(resnet18.bn1(resnet18.conv1(x))))
        for layer in (resnet18.layer1, resnet18.layer2, resnet18.layer3, resnet18.layer4):
            h = layer(h)
    np.testing.assert_allclose(feats["layer4"], h.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-5)


def test_vit_cls_of_final_ln_reproduces_logits() -> None:
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats = capture(model, x, token_pool="cls", keep_output=True, progress=False)
    assert feats.layers[-1] == "encoder.ln" and len(feats.layers) == 4
    assert set(feats.dims.values()) == {32}
    head = model.heads.head
    logits = feats["encoder.ln"] @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    np.testing.assert_allclose(logits, feats.output, rtol=1e-4, atol=1e-5)
    mean = capture(model, x, ["encoder.ln"], token_pool="mean", progress=False)["encoder.ln"]
    assert not np.allclose(mean, feats["encoder.ln"])


# ----------------------------------------------------------------------------- hooks and modes


def test_hooks_removed_and_modes_restored_after_success_and_failure() -> None:
    model = DemoCNN()
    model.train()
    model.block2.eval()
    model.block3[1].eval()
    before = {name: m.training for name, m in model.named_modules()}
    seen_modes = []
    model.block1.register_forward_pre_hook(lambda m, i: seen_modes.append(m.training))

    capture(model, torch.randn(2, 1, 16, 16), progress=False)
    assert seen_modes == [False]  # eval during capture
    model.block1._forward_pre_hooks.clear()
    assert all_hooks_removed(model)
    assert {name: m.training for name, m in model.named_modules()} == before

    boom = Exploding().train()
    boom.bn.eval()
    with pytest.raises(RuntimeError, match="boom inside forward"):
        capture(boom, torch.randn(2, 3), ["fc", "bn"], progress=False)
    assert all_hooks_removed(boom)
    assert boom.training and not boom.bn.training and boom.fc.training


def test_reused_module_is_an_error(resnet18: nn.Module) -> None:
    model = ReusedReLU()
    with pytest.raises(ValueError, match=r"'act' was called 2 times.*parent block"):
        capture(model, torch.randn(4, 3), ["act"], progress=False)
    assert all_hooks_removed(model)
    # torchvision's BasicBlock applies its one ReLU twice.
    with pytest.raises(ValueError, match=r"'layer1.0.relu' was called 2 times.*'layer1.0'"):
        capture(resnet18, torch.randn(1, 3, 32, 32), ["layer1.0.relu"], progress=False)
    assert all_hooks_removed(resnet18)


def test_auto_drops_layers_the_forward_does_not_run() -> None:
    model = WithAux()
    with pytest.warns(UserWarning, match="'aux' is not run"):
        feats = capture(model, torch.randn(4, 3), progress=False)
    assert feats.layers == ["body", "trunk"]
    with pytest.raises(ValueError, match="'aux' was not called"):
        capture(model, torch.randn(4, 3), ["aux"], progress=False)


def test_unknown_layer_lists_available_and_close_matches(resnet18: nn.Module) -> None:
    with pytest.raises(ValueError) as err:
        capture(resnet18, torch.randn(1, 3, 32, 32), ["layer5", "maxpool"], progress=False)
    msg = str(err.value)
    assert "Layer 'layer5' is not a module of ResNet" in msg
    assert "Did you mean 'layer4', 'layer3', 'layer2'?" in msg  # difflib close matches
    assert "Available module names (67): 'conv1', 'bn1', 'relu', 'maxpool', 'layer1'" in msg
    assert "'layer4.1', 'avgpool', 'fc', ... (49 more)" in msg  # deep names are cut
    assert "probes.discover_layers" in msg
    assert all_hooks_removed(resnet18)


# ----------------------------------------------------------------------------- data forms


class PairDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: list[int]) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def test_labels_from_datasets_loaders_and_absent_for_x_only() -> None:
    model = nn.Sequential(nn.Linear(3, 4))
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    y = [0, 2, 1, -1, 2, 0, 1]  # -1: unlabelled, kept as is
    direct = capture(model, x, progress=False)["0"]

    ds = capture(model, PairDataset(x, y), batch_size=3, progress=False)
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == y
    np.testing.assert_allclose(ds["0"], direct, atol=1e-6)

    loader = DataLoader(TensorDataset(x, torch.tensor(y)), batch_size=2)
    dl = capture(model, loader, progress=False)
    assert dl.labels.tolist() == y
    np.testing.assert_allclose(dl["0"], direct, atol=1e-6)

    assert capture(model, TensorDataset(x), progress=False).labels is None
    assert capture(model, x.numpy().astype(np.float64), progress=False).labels is None
    # Float targets are not class labels.
    assert capture(model, TensorDataset(x, torch.rand(7)), progress=False).labels is None
    with pytest.raises(ValueError, match="Some batches of 'data' carry integer labels"):
        capture(model, [(x[:3], torch.tensor([0, 1, 2])), x[3:]], progress=False)


def test_max_samples_takes_the_first_examples() -> None:
    model = nn.Sequential(nn.Linear(3, 4))
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    full = capture(model, x, progress=False)["0"]
    labelled = TensorDataset(x, torch.arange(10))
    for data in (x, labelled, DataLoader(labelled, batch_size=4)):
        feats = capture(model, data, batch_size=4, max_samples=6, progress=False)
        assert feats.n == 6
        np.testing.assert_allclose(feats["0"], full[:6], atol=1e-6)


def test_keep_output_matches_model(resnet18: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    feats = capture(resnet18, x, ["layer4"], keep_output=True, progress=False)
    resnet18.eval()
    with torch.no_grad():
        expected = resnet18(x).numpy()
    assert feats.output.shape == (2, 1000) and feats.output.dtype == np.float32
    np.testing.assert_allclose(feats.output, expected, rtol=1e-5, atol=1e-5)
    assert capture(resnet18, x, ["layer4"], progress=False).output is None


# ----------------------------------------------------------------------------- projection


def test_random_projection_shape_linearity_and_determinism() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    raw = capture(model, x, ["1", "2"], progress=False)
    proj = capture(model, x, ["1", "2"], max_dim=4, batch_size=7, progress=False)
    assert proj.dims == {"1": 4, "2": 3}
    assert proj.projected == {"1": 16}
    # D <= max_dim: untouched. Float32 outputs from batches of 7 vs one batch of
    # 40: GEMM blocking may change the rounding (1.2e-7 seen), so a float32
    # tolerance: rtol 1e-6 and atol 1e-6 scaled to the largest |value|.
    np.testing.assert_allclose(proj["2"], raw["2"], rtol=1e-6, atol=_f32_atol(raw["2"]))
    # The projection is one fixed linear map for every batch: raw @ M reproduces it exactly.
    m, *_ = np.linalg.lstsq(raw["1"].astype(np.float64), proj["1"].astype(np.float64), rcond=None)
    np.testing.assert_allclose(raw["1"] @ m, proj["1"], atol=1e-4)
    # Same seed and layer name -> same matrix, whatever else is captured. This
    # run uses the default batch size (one batch), ``proj`` batches of 7: the
    # float32 tolerance above. A different matrix would differ at O(1).
    again = capture(model, x, ["1"], max_dim=4, progress=False)
    np.testing.assert_allclose(again["1"], proj["1"], rtol=1e-6, atol=_f32_atol(proj["1"]))
    # With the same batch size in the same process, the same code on the same
    # data: bit-for-bit.
    same = capture(model, x, ["1"], max_dim=4, batch_size=7, progress=False)
    np.testing.assert_array_equal(same["1"], proj["1"])
    other = capture(model, x, ["1"], max_dim=4, seed=1, progress=False)
    assert not np.allclose(other["1"], proj["1"])


# ----------------------------------------------------------------------------- validation and result


def test_parameter_validation_messages() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"The 'pool' parameter of capture must be one of"):
        capture(model, x, pool="median", progress=False)
    with pytest.raises(ValueError, match=r"The 'token_pool' parameter of capture.*Got 'first'"):
        capture(model, x, token_pool="first", progress=False)
    with pytest.raises(ValueError, match=r"'batch_size' parameter of capture must be a positive"):
        capture(model, x, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="holds no examples"):
        capture(model, torch.empty(0, 3), progress=False)
    with pytest.raises(ValueError, match="holds no examples"):
        capture(model, [], progress=False)
    with pytest.raises(TypeError, match="must be a torch Dataset"):
        capture(model, 3.0, progress=False)
    with pytest.raises(ValueError, match="Move the model first"):
        capture(model, x, device="cuda", progress=False)


def test_captured_features_subset_getitem_and_to_dict() -> None:
    feats = capture(
        conv_1to2(),
        TensorDataset(ramp_inputs(4), torch.tensor([3, 1, 2, 0])),
        ["0"],
        progress=False,
    )
    sub = feats.subset([2, 0])
    assert isinstance(sub, CapturedFeatures) and sub.n == 2
    np.testing.assert_array_equal(sub["0"], feats["0"][[2, 0]])
    assert sub.labels.tolist() == [2, 3]
    assert feats.subset(np.array([True, False, False, True])).labels.tolist() == [3, 0]
    with pytest.raises(KeyError, match="was not captured"):
        feats["nope"]
    summary = feats.to_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary == {
        "layers": ["0"],
        "dims": {"0": 2},
        "n": 4,
        "pooling": {"pool": "avg", "token_pool": "mean"},
        "projected": {},
        "has_labels": True,
        "has_output": False,
        "storage": "memory",
        "bytes": 4 * 2 * 4,
    }


def test_count_examples_is_known_only_without_iterating() -> None:
    from torch.utils.data import IterableDataset

    from probes._capture_data import count_examples

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(torch.zeros(5, 3))

    ds = TensorDataset(torch.zeros(10, 3))
    assert count_examples(torch.zeros(7, 3), None) == 7
    assert count_examples(np.zeros((7, 3)), 4) == 4
    assert count_examples(ds, None) == 10 and count_examples(ds, 25) == 10
    assert count_examples(DataLoader(ds, batch_size=4), None) == 10
    assert count_examples(DataLoader(ds, batch_size=4, drop_last=True), None) == 8
    assert count_examples(DataLoader(ds, batch_sampler=[[0, 1], [2]]), None) is None
    assert count_examples([torch.zeros(4, 3)] * 3, None) is None  # len() counts batches
    assert count_examples(Stream(), None) is None


def test_width_change_is_caught_before_the_projection():
    # The first batch is exactly max_dim wide (kept as is), the next wider (projected
    # down to max_dim): after projection the widths would match and mix raw and
    # projected rows, so the raw width is what must hold.
    model = nn.Sequential(nn.Flatten())
    batches = [torch.randn(2, 4), torch.randn(2, 6)]
    with pytest.raises(ValueError, match=r"Layer '0' gave different dimensions .*\[4, 6\]"):
        capture(model, iter(batches), ["0"], max_dim=4, progress=False)
