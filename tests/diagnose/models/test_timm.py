"""``timm:NAME`` models (issue 11): offline weights, fixed input sizes, blocks, token pooling.

Runs only with timm installed (``pip install '.[timm]'``); skipped, with that
reason, otherwise. Every model here is random-init: nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import single_thread

import diagnose
from diagnose.cli import main
from diagnose.models import cut_description, trainable_modules

timm = pytest.importorskip("timm", reason="timm is not installed (pip install '.[timm]')")

FAST = dict(max_samples=40, n_permutations=10, progress=False, device="cpu", trial_budget=0)


@pytest.fixture()
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache: no pretrained file is there."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_missing_pretrained_weights_fail_at_once_offline(empty_hub, capsys):
    with pytest.raises(ValueError) as err:
        diagnose.load_model("timm:resnet18")
    message = str(err.value)
    assert "not in timm's local cache; nothing is downloaded" in message
    assert "weights=PATH" in message and "weights=random" in message
    code = main(["assess", "--model", "timm:resnet18", "--target", "demo:digits"])
    line = capsys.readouterr().err
    assert code == 2 and "--weights PATH" in line and line.count("\n") == 1


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet181'.*did you mean"):
        diagnose.load_model("timm:resnet181", weights="random")


def test_a_local_state_dict_loads_and_describes_the_model(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(ValueError, match="do not match the model"):
        diagnose.load_model("timm:resnet18", weights=str(path))  # 1000 classes vs 10
    full = timm.create_model("resnet18", pretrained=False)
    torch.save(full.state_dict(), path)
    loaded = diagnose.load_model("timm:resnet18", weights=str(path))
    assert loaded.head == "fc" and loaded.input_size == 224 and loaded.pretrained
    assert loaded.mean == pytest.approx((0.485, 0.456, 0.406))
    for (n, a), b in zip(loaded.model.state_dict().items(), full.state_dict().values()):
        assert torch.equal(a, b), n


def test_a_vit_is_created_at_the_image_size_and_a_mismatched_file_is_refused(tmp_path):
    vit = diagnose.load_model("timm:vit_tiny_patch16_224", weights="random", image_size=32)
    assert vit.input_size == 32 and any("32x32 inputs only" in n for n in vit.notes)
    assert vit.model(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)
    path = tmp_path / "vit224.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), path)
    with pytest.raises(ValueError, match=r"another input size than the 32 px .*image_size"):
        diagnose.load_model("timm:vit_tiny_patch16_224", weights=str(path), image_size=32)


def test_blocks_come_from_timm_and_unfreezing_names_transformer_blocks():
    vit = diagnose.load_model("timm:vit_tiny_patch16_224", weights="random", image_size=32)
    import probes

    blocks = probes.discover_layers(vit.model)
    assert blocks == [f"blocks.{i}" for i in range(12)]
    trained = trainable_modules(vit.model, blocks, vit.head, blocks[-2:])
    # Everything after the cut trains: the last two blocks, the final norm, the head.
    assert trained[:2] == ["blocks.10", "blocks.11"] and trained[-1] == "head"
    assert "norm" in trained and "blocks.9" not in trained
    assert cut_description(vit.model, blocks, vit.head, blocks[-2:]).startswith(
        "everything after blocks.9 trains (blocks.10, blocks.11"
    )


def test_assess_a_vit_with_class_token_pooling_and_a_cnn():
    torch.manual_seed(0)
    with single_thread():
        cls = diagnose.assess(
            "timm:vit_tiny_patch16_224",
            "demo:digits",
            "demo:digits-noise",
            weights="random",
            image_size=32,
            layers=["blocks.5", "blocks.11"],
            pool="cls",
            **FAST,
        ).to_dict()
        mean = diagnose.assess(
            "timm:vit_tiny_patch16_224",
            "demo:digits",
            "demo:digits-noise",
            weights="random",
            image_size=32,
            layers=["blocks.5", "blocks.11"],
            pool="mean",
            **FAST,
        ).to_dict()
    assert [layer["name"] for layer in cls["layers"]] == ["blocks.5", "blocks.11"]
    assert cls["layers"][0]["dim"] == 192  # one token's width, either pooling
    # The class token and the token mean are different features: the probes differ.
    probe = lambda r: [layer["probe"]["target"]["accuracy"] for layer in r["layers"]]  # noqa: E731
    assert probe(cls) != probe(mean)
    with pytest.raises(
        ValueError,
        match=r"'pool' parameter of assess must be one of 'mean', 'cls' \(token pooling\)",
    ):
        diagnose.assess("demo", "demo:digits", "demo:digits-noise", pool="max", **FAST)
