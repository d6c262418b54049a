"""Tests of diagnose.models.loading: demo CNN pretraining and cache, torchvision offline, checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import diagnose.models.demo_cnn as demo_mod
from diagnose.data.domains import load_domain
from diagnose.models.cache import resolve_cache_dir
from diagnose.models.demo_cnn import DemoCNN, cache_file, pretrain
from diagnose.models.loaded import find_head, load_weights, random_init_copy
from diagnose.models.loading import demo_model, demo_model_info, load_model


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture()
def fast_pretrain(monkeypatch):
    """Replace the 12-epoch recipe by one epoch and count the trainings."""
    calls = []
    real = demo_mod.pretrain

    def one_epoch(seed=0, **kw):
        calls.append(seed)
        kw["epochs"] = 1
        return real(seed, **kw)

    monkeypatch.setattr(demo_mod, "pretrain", one_epoch)
    return calls


# ---------------------------------------------------------------- demo model


def test_demo_model_pretrained_accuracy_and_fields(loaded_demo, demo_cache_dir):
    info = demo_model_info(cache_dir=demo_cache_dir)
    assert info["source_test_accuracy"] >= 0.95 and info["from_cache"] is True
    assert info["recipe_version"] == demo_mod.RECIPE_VERSION and info["seed"] == 0
    # The recorded accuracy is what the cached model really scores on the test split.
    d = load_domain("demo:digits")
    test = d.splits(seed=0)["test"]
    with torch.no_grad():
        pred = loaded_demo.model(d.dataset.images[test]).argmax(1).numpy()
    assert np.mean(pred == d.labels[test]) == pytest.approx(info["source_test_accuracy"])
    assert info["n_test"] == len(test)

    lm = loaded_demo
    assert [n for n, _ in lm.model.named_children()] == [
        "block1",
        "block2",
        "block3",
        "block4",
        "pool",
        "head",
    ]
    assert sum(p.numel() for p in lm.model.pool.parameters()) == 0
    assert lm.head == "head" and lm.num_source_classes == 10
    assert lm.source_classes == [str(i) for i in range(10)]
    assert (lm.input_channels, lm.input_size, lm.mean, lm.std) == (1, 32, None, None)
    assert lm.pretrained and not lm.model.training
    assert "accuracy" in lm.notes[0]
    out = json.loads(json.dumps(lm.to_dict()))
    assert out["num_parameters"] == sum(p.numel() for p in lm.model.parameters())
    assert out["head"] == "head" and out["input_size"] == 32


def test_demo_cache_written_once_and_reused(tmp_path, fast_pretrain):
    first = demo_model(cache_dir=str(tmp_path), progress=False)
    path = cache_file(str(tmp_path), 0)
    assert fast_pretrain == [0] and path.is_file()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # atomic write left no temp
    mtime = path.stat().st_mtime_ns
    start = time.perf_counter()
    second = demo_model(cache_dir=str(tmp_path), progress=False)
    assert time.perf_counter() - start < 5.0
    assert fast_pretrain == [0] and path.stat().st_mtime_ns == mtime
    assert _same_state(first, second) and not second.training
    assert demo_model_info(cache_dir=str(tmp_path))["from_cache"] is True
    # The file is plain tensors and metadata: loadable with weights_only=True.
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"state_dict", "meta"} and blob["meta"]["epochs"] == 1


def test_demo_corrupt_cache_is_retrained(tmp_path, fast_pretrain):
    path = cache_file(str(tmp_path), 0)
    path.write_bytes(b"not a torch file")
    lm = load_model("demo", cache_dir=str(tmp_path), progress=False)
    assert fast_pretrain == [0]
    assert any("could not be used" in n and "retrained" in n for n in lm.notes)
    torch.load(path, weights_only=True)  # replaced by a valid file


def test_pretrain_is_reproducible_and_leaves_global_state(monkeypatch):
    losses_a, losses_b, losses_c = [], [], []
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    a, meta = pretrain(0, epochs=1, progress=False, losses=losses_a)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # the caller's RNG stream is untouched
    assert torch.get_num_threads() == threads
    b, _ = pretrain(0, epochs=1, progress=False, losses=losses_b)
    assert losses_a == losses_b and _same_state(a, b)
    pretrain(1, epochs=1, progress=False, losses=losses_c)
    assert losses_c != losses_a
    assert meta["n_train"] + meta["n_test"] == len(load_domain("demo:digits"))


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("DIAGNOSE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "transfer-diagnose"
    monkeypatch.setenv("DIAGNOSE_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("DIAGNOSE_CACHE_DIR")
    assert resolve_cache_dir().parts[-2:] == (".cache", "transfer-diagnose")


# ---------------------------------------------------------------- heads and random init


def test_find_head():
    assert find_head(torchvision.models.resnet18()) == "fc"
    assert find_head(DemoCNN()) == "head"
    assert find_head(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())) is None
    nested = nn.Sequential(
        nn.Linear(4, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 2)), nn.Softmax(1)
    )
    assert find_head(nested) == "1.1"


def test_find_head_of_a_headless_transformer_is_none():
    """A timm ViT without its classifier keeps linear layers in its last block's MLP, with
    the final norm after them: none of them is a head."""
    timm = pytest.importorskip("timm", reason="timm is an optional extra ('.[timm]')")
    kw = {"img_size": 32, "pretrained": False}
    assert find_head(timm.create_model("vit_tiny_patch16_224", num_classes=0, **kw)) is None
    assert find_head(timm.create_model("vit_tiny_patch16_224", num_classes=5, **kw)) == "head"
    assert find_head(torchvision.models.mobilenet_v3_small()) == "classifier.3"


class _WithRawParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.full((1, 64), 5.0))
        self.fc = nn.Linear(64, 3)


def test_random_init_copy(loaded_demo):
    original = loaded_demo.model
    before = {k: v.clone() for k, v in original.state_dict().items()}
    c0 = random_init_copy(original, seed=0)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
    assert not torch.equal(c0.block1[0].weight, original.block1[0].weight)
    assert not torch.equal(c0.head.weight, original.head.weight)
    # PyTorch's default init: Linear weights within 1/sqrt(fan_in); BN stats reset.
    assert float(c0.head.weight.detach().abs().max()) <= 1 / np.sqrt(128)
    bn = c0.block2[1]
    assert torch.equal(bn.running_mean, torch.zeros(32)) and torch.equal(
        bn.running_var, torch.ones(32)
    )
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.weight, torch.ones(32))
    assert _same_state(c0, random_init_copy(original, seed=0))
    assert not _same_state(c0, random_init_copy(original, seed=1))
    raw = random_init_copy(_WithRawParameter(), seed=0)
    token = raw.token.detach()
    assert float(token.abs().max()) <= 0.04 and float(token.std()) > 0.005


# ---------------------------------------------------------------- torchvision


def _no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a network download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_torchvision_offline_error_is_immediate(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _no_network(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(
        ValueError,
        match=r"not in the local torchvision cache at .*resnet18-f37072fd\.pth; nothing is "
        r"downloaded: pass weights=PATH .* or weights=random",
    ):
        load_model("torchvision:resnet18")
    assert time.perf_counter() - start < 5.0


def test_torchvision_unknown_name_suggests():
    with pytest.raises(
        ValueError, match=r"unknown torchvision model 'resnet19'.*did you mean resnet18"
    ):
        load_model("torchvision:resnet19")


def test_torchvision_random_weights():
    lm = load_model("torchvision:resnet18", weights="random")
    assert lm.pretrained is False and lm.head == "fc" and lm.num_source_classes == 1000
    assert lm.source_classes is None and lm.input_size == 224 and lm.input_channels == 3
    assert lm.mean == pytest.approx((0.485, 0.456, 0.406)) and not lm.model.training
    assert any("random" in n for n in lm.notes)


def test_torchvision_reads_local_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _no_network(monkeypatch)
    name = "mobilenet_v3_small"
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    ckpt = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name)
    torch.save(reference.state_dict(), ckpt)
    lm = load_model(f"torchvision:{name}")
    assert _same_state(lm.model, reference) and lm.pretrained
    assert lm.head == "classifier.3" and lm.num_source_classes == 1000
    assert len(lm.source_classes) == 1000 and lm.source_classes[0] == "tench"
    assert lm.input_size == 224 and lm.std == pytest.approx((0.229, 0.224, 0.225))
    assert str(ckpt) in lm.notes[0]


# ---------------------------------------------------------------- weights files


def test_load_weights_round_trip_and_wrappers(tmp_path):
    torch.manual_seed(1)
    src = DemoCNN()
    state = src.state_dict()
    variants = {
        "plain.pt": state,
        "wrapped.pt": {"state_dict": state, "epoch": 3},
        "ddp.pt": {"model": {f"module.{k}": v for k, v in state.items()}},
    }
    for fname, obj in variants.items():
        torch.save(obj, tmp_path / fname)
        dst = load_weights(DemoCNN(), tmp_path / fname)
        assert _same_state(dst, src), fname
    lm = load_model("demo", weights=str(tmp_path / "plain.pt"))
    assert _same_state(lm.model, src) and lm.pretrained and "plain.pt" in lm.notes[0]


def test_demo_with_weights_does_not_pretrain(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_mod, "pretrain", lambda *a, **k: pytest.fail("pretrained"))
    torch.save(DemoCNN().state_dict(), tmp_path / "w.pt")
    assert load_model("demo", weights=str(tmp_path / "w.pt"), cache_dir=str(tmp_path)).pretrained
    assert load_model("demo", weights="random", cache_dir=str(tmp_path)).pretrained is False


def test_load_weights_wrong_architecture(tmp_path):
    torch.save(DemoCNN(num_classes=5).state_dict(), tmp_path / "five.pt")
    with pytest.raises(
        ValueError,
        match=r"do not match the model \(wrong architecture\?\): 2 shape mismatch\(es\) "
        r"\('head.weight': file \(5, 128\) vs model \(10, 128\), 'head.bias'",
    ):
        load_weights(DemoCNN(), tmp_path / "five.pt")
    state = DemoCNN().state_dict()
    del state["block1.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(
        ValueError,
        match=r"1 missing key\(s\) \(block1.0.weight\); 1 unexpected key\(s\) \(extra.weight\)",
    ):
        load_weights(DemoCNN(), tmp_path / "keys.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"holds a list, not a state dict"):
        load_weights(DemoCNN(), tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"weights file '.*nothere.pt' does not exist"):
        load_weights(DemoCNN(), tmp_path / "nothere.pt")


def test_full_pickled_model_needs_trust(tmp_path):
    torch.manual_seed(2)
    full = DemoCNN()
    path = tmp_path / "full.pt"
    torch.save(full, path)
    with pytest.raises(ValueError, match=r"could run arbitrary code.*trust_checkpoint=True"):
        load_model(str(path))
    with pytest.raises(ValueError, match=r"could run arbitrary code.*trust_checkpoint=True"):
        load_weights(DemoCNN(), path)
    lm = load_model(str(path), trust_checkpoint=True)
    assert _same_state(lm.model, full) and lm.head == "head" and not lm.model.training
    assert any("trust" in n for n in lm.notes)
    assert _same_state(load_weights(DemoCNN(), path, trust_checkpoint=True), full)


def test_state_dict_checkpoint_as_model_says_what_to_pass(tmp_path):
    path = tmp_path / "sd.pth"
    torch.save(DemoCNN().state_dict(), path)
    with pytest.raises(
        ValueError,
        match=r"is a state dict with no architecture: pass model=ARCH weights=.*sd.pth",
    ):
        load_model(str(path))
    with pytest.raises(ValueError, match=r"checkpoint '.*missing.ckpt' does not exist"):
        load_model(str(tmp_path / "missing.ckpt"))
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"could not be read as a PyTorch file"):
        load_model(str(tmp_path / "garbage.pt"))


class _Evil:
    """Unpickling this opens (creates) a file: what a malicious checkpoint could do."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_checkpoint_is_not_executed(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil(str(target))}, path)
    assert not target.exists()
    with pytest.raises(ValueError, match=r"arbitrary code"):
        load_model(str(path))
    with pytest.raises(ValueError, match=r"arbitrary code"):
        load_weights(DemoCNN(), path)
    with pytest.raises(ValueError, match=r"arbitrary code"):
        load_model("demo", weights=str(path))
    # A plain pickle (not torch's zip format) is refused the same way.
    plain = tmp_path / "evil.pkl"
    with open(plain, "wb") as f:
        pickle.dump(_Evil(str(target)), f)
    with pytest.raises(ValueError, match=r"arbitrary code"):
        load_model(str(plain))
    assert not target.exists()


# ---------------------------------------------------------------- module:function


@pytest.fixture()
def model_module(tmp_path, monkeypatch):
    code = textwrap.dedent(
        """
        from torch import nn

        def make():
            torch_model = nn.Sequential(
                nn.Conv2d(2, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
            )
            return torch_model.train()

        def not_a_model():
            return "resnet"

        def boom():
            raise RuntimeError("no GPU here")
        """
    )
    name = "h_user_model_mod"
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_callable_model_spec(model_module, tmp_path):
    lm = load_model(f"{model_module}:make")
    assert lm.head == "3" and lm.num_source_classes == 3 and lm.input_channels == 2
    assert lm.input_size is None and lm.mean is None and not lm.model.training
    torch.manual_seed(3)
    other = load_model(f"{model_module}:make").model
    for p in other.parameters():
        nn.init.normal_(p)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    lm2 = load_model(f"{model_module}:make", weights=str(tmp_path / "w.pt"))
    assert _same_state(lm2.model, other)
    assert load_model(f"{model_module}:make", head="0").num_source_classes is None
    with pytest.raises(ValueError, match=r"head 'nope' is not a module of .*:make"):
        load_model(f"{model_module}:make", head="nope")


def test_callable_model_spec_errors(model_module):
    with pytest.raises(ValueError, match=r"returned a str, not a torch.nn.Module"):
        load_model(f"{model_module}:not_a_model")
    with pytest.raises(ValueError, match=r"raised RuntimeError: no GPU here"):
        load_model(f"{model_module}:boom")
    with pytest.raises(ValueError, match=r"has no function 'missing'"):
        load_model(f"{model_module}:missing")
    with pytest.raises(ValueError, match=r"could not import module 'nowhere_xyz'"):
        load_model("nowhere_xyz:make")
    with pytest.raises(ValueError, match=r"unknown model spec 'what is this'"):
        load_model("what is this")
