"""ForgettingMeter and weight_drift against hand computations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import Tiny, single_thread
from torch import nn

from diagnose.measure.drift import WeightDrift, weight_drift
from diagnose.measure.forgetting import ForgettingMeter
from diagnose.models import memory_layout
from diagnose.models.groups import parameter_groups

BLOCKS = ["block1", "block2", "block3"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = Tiny().eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(48, 1, 8, 8)
    y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 4  # reference accuracy 2/3, not 1
    return model, x, y


def _tracker(model, x, y, **kw):
    return ForgettingMeter(
        model, head="head", blocks=BLOCKS, source_x=x, source_y=y, device="cpu", batch_size=16, **kw
    )


def _with_new_head(model, classes=3):
    m = copy.deepcopy(model)
    m.head = nn.Linear(8, classes)
    return m


def _linear_cka(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    return np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))


def test_pretrained_with_new_head_has_not_forgotten(setup):
    model, x, y = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tracker = _tracker(model, x, y)
    assert tracker.reference_source_accuracy == pytest.approx(32 / 48)
    out = tracker.measure(_with_new_head(model))
    assert out["agreement"] == 1.0
    assert out["source_accuracy"] == tracker.reference_source_accuracy
    assert set(out["cka"]) == set(BLOCKS)
    for v in out["cka"].values():
        assert v == pytest.approx(1.0, abs=1e-9)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_perturbed_block_lowers_agreement_and_cka(setup):
    model, x, y = setup
    tracker = _tracker(model, x, y)
    changed = _with_new_head(model)
    with torch.no_grad():
        changed.block2[0].weight.add_(torch.randn_like(changed.block2[0].weight) * 0.8)
    out = tracker.measure(changed)
    assert out["cka"]["block1"] == pytest.approx(1.0, abs=1e-9)
    assert out["cka"]["block2"] < 0.99 and out["cka"]["block3"] < 0.99
    assert out["agreement"] < 1.0

    # Independent computation: pooled block outputs and the original head, by hand.
    with torch.no_grad():
        feats, ref, h, r = {}, {}, x, x
        for b in BLOCKS:
            h = getattr(changed, b)(h)
            r = getattr(model, b)(r)
            feats[b], ref[b] = h.mean((2, 3)), r.mean((2, 3))
        preds = model.head(feats["block3"]).argmax(1)  # the ORIGINAL head on new features
        ref_preds = model(x).argmax(1)
    assert out["agreement"] == pytest.approx(float((preds == ref_preds).float().mean()))
    assert out["source_accuracy"] == pytest.approx(float((preds == y).float().mean()))
    for b in BLOCKS:
        expected = _linear_cka(ref[b].double().numpy(), feats[b].double().numpy())
        assert out["cka"][b] == pytest.approx(expected, rel=1e-5)


def test_measure_restores_modes_and_removes_hooks(setup):
    model, x, y = setup
    tracker = _tracker(model, x, None)
    assert tracker.reference_source_accuracy is None
    m = _with_new_head(model).train()
    out = tracker.measure(m)
    assert out["source_accuracy"] is None and out["agreement"] == 1.0
    assert all(mod.training for mod in m.modules())
    assert len(m.head._forward_pre_hooks) == 0
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    m.block3 = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        tracker.measure(m)
    assert len(m.head._forward_pre_hooks) == 0
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())


def test_max_samples_and_validation(setup):
    model, x, y = setup
    tracker = _tracker(model, x, y, max_samples=20)
    assert tracker.n == 20
    with pytest.raises(ValueError, match=r"'source_y' must have shape \(48,\)"):
        _tracker(model, x, y[:5])
    with pytest.raises(ValueError, match=r"head 'fc' is not a module of Tiny"):
        ForgettingMeter(model, head="fc", blocks=BLOCKS, source_x=x, source_y=None, device="cpu")


def _block3_layouts(model):
    """A hook recording, per forward, whether block3's input (8 channels) is channels-last.

    The images have one channel, which is both layouts at once, and so is block1's
    output (its conv weights have one input channel); block2's conv sets the layout."""
    seen = []

    def hook(module, args):
        seen.append(args[0].is_contiguous(memory_format=torch.channels_last))

    return seen, model.block3.register_forward_pre_hook(hook)


def test_every_pass_runs_in_the_measured_layout_or_the_requested_one(setup, tmp_path, monkeypatch):
    model, x, y = setup
    monkeypatch.setenv("DIAGNOSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(memory_layout, "MARGIN", 1e12)  # any measured times choose channels-last
    memory_layout.forget_layouts()
    auto = _tracker(model, x, y)
    memory_layout.forget_layouts()
    assert auto.layout.name == "channels_last"
    assert auto.layout.reason.startswith("measured once on this machine: a forward of 16")
    nchw = _tracker(model, x, y, memory_format="contiguous")
    assert nchw.layout.reason == "requested"
    # block3's input shows the layout each pass ran.
    probe = _with_new_head(model)
    seen, handle = _block3_layouts(probe)
    try:
        auto.measure(probe)
        assert seen and all(seen)
        seen.clear()
        nchw.measure(probe)
        assert seen and not any(seen)
    finally:
        handle.remove()
    perturbed = _with_new_head(model)
    with torch.no_grad():
        perturbed.block2[0].weight.add_(0.3 * torch.randn_like(perturbed.block2[0].weight))
    a, b = auto.measure(perturbed), nchw.measure(perturbed)
    # Another convolution algorithm sums in another order: float32 rounding, ~1e-6 of
    # a CKA near 1; 1e-4 is far above it and far below the perturbation's effect.
    for k in BLOCKS:
        assert a["cka"][k] == pytest.approx(b["cka"][k], abs=1e-4)
    assert a["cka"]["block3"] < 0.999
    # The reference ran in the same layout: the unchanged model is exactly unchanged.
    assert auto.measure(_with_new_head(model))["agreement"] == 1.0
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in auto.measure(model)["cka"].values())
    with pytest.raises(ValueError, match=r"'memory_format' parameter of ForgettingMeter"):
        _tracker(model, x, y, memory_format="nhwc")


def test_weight_drift_known_values(setup):
    model, _, _ = setup
    groups = parameter_groups(model, BLOCKS, "head")
    ref = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert weight_drift(model, ref, groups) == dict.fromkeys(BLOCKS, 0.0)
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for p in scaled.block2.parameters():
            p.mul_(1.1)
        scaled.head.weight.mul_(5.0)  # the head is not measured
    drift = weight_drift(scaled, ref, groups)
    assert set(drift) == set(BLOCKS)
    # float32 reductions: a few float32 epsilons (1.2e-7) per term of the sums
    assert drift["block2"] == pytest.approx(0.1, rel=1e-5)
    assert drift["block1"] == 0.0 and drift["block3"] == 0.0
    # Relative to the whole group's norm, not per tensor: scale one tensor only.
    one = copy.deepcopy(model)
    with torch.no_grad():
        one.block3[0].weight.mul_(2.0)
    w = ref["block3.0.weight"].double()
    rest = sum(float(ref[n].double().pow(2).sum()) for n in groups["block3"])
    expected = float(w.pow(2).sum()) ** 0.5 / rest**0.5
    assert weight_drift(one, ref, groups)["block3"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"missing from 'reference_state'"):
        weight_drift(model, {}, groups)
    with pytest.raises(ValueError, match=r"'block1' are missing from the model"):
        WeightDrift(ref, groups)(nn.Sequential())


def test_weight_drift_meter_is_reusable_and_float64_close(setup):
    """One meter, many measurements: each equals the float64 formula to float32 rounding."""
    model, _, _ = setup
    groups = parameter_groups(model, BLOCKS, "head")
    ref = {k: v.detach().clone() for k, v in model.named_parameters()}
    meter = WeightDrift(ref, groups)
    moved = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-4, 1e-2, 1.0):
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale)
        got = meter(moved)
        params = dict(moved.named_parameters())
        for g in BLOCKS:
            num = sum(float((params[n].double() - ref[n].double()).pow(2).sum()) for n in groups[g])
            den = sum(float(ref[n].double().pow(2).sum()) for n in groups[g])
            # float32 sums of up to a few hundred terms: relative error well under 1e-5
            assert got[g] == pytest.approx((num / den) ** 0.5, rel=1e-5)
    zero = {k: torch.zeros_like(v) for k, v in ref.items()}
    assert WeightDrift(zero, groups)(model) == dict.fromkeys(BLOCKS, None)


def test_suggest_source_samples_follows_the_cost_model():
    from diagnose.measure.forgetting import suggest_source_samples

    assert suggest_source_samples(10_000, 2_000) == int(0.03 * (3 * 10_000 + 2_000))
    assert suggest_source_samples(538, 179) == 64  # floor: fewer images make CKA noisy
    assert suggest_source_samples(10**6) == 1024
    assert suggest_source_samples(2000, budget=0.1, floor=1) == 600


def test_a_diverged_model_gives_none_not_an_error(setup):
    model, x, y = setup
    tracker = _tracker(model, x, y)
    broken = _with_new_head(model)
    with torch.no_grad():
        broken.block3[0].weight.fill_(float("nan"))
    out = tracker.measure(broken)
    assert out["cka"]["block1"] == pytest.approx(1.0, abs=1e-9)
    assert out["cka"]["block3"] is None
    assert out["agreement"] is None and out["source_accuracy"] is None


def test_forgetting_interval_keeps_measurements_under_their_share_of_training():
    from diagnose.measure.forgetting import MEASURE_SHARE, forgetting_interval

    assert forgetting_interval(64, 538) == 1  # the demo target: every epoch
    assert forgetting_interval(48, 16) == 4
    for n_source, n_train in [(64, 8), (48, 16), (128, 100), (1024, 10_000)]:
        k = forgetting_interval(n_source, n_train)
        assert n_source / (k * 3 * n_train) <= MEASURE_SHARE  # the share, per epoch
        assert k == 1 or n_source / ((k - 1) * 3 * n_train) > MEASURE_SHARE  # and no sparser
