"""run_strategy on a tiny CNN: what trains, what stays frozen, determinism, failure modes."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
from tiny_models import Tiny, single_thread
from torch import nn

import diagnose.training.strategy_run
from diagnose.core.entry import StrategyEntry
from diagnose.core.names import STRATEGY_NAMES
from diagnose.measure.forgetting import ForgettingMeter
from diagnose.training.config import TrainConfig
from diagnose.training.curves import BestState, detect_overfitting
from diagnose.training.runner import TargetData, run_strategy

BLOCKS = ["block1", "block2", "block3"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def _images(n, gen, shift=0.0):
    y = torch.arange(n) % 3
    x = torch.randn(n, 1, 8, 8, generator=gen) * 0.6 + shift
    for k, (r, c) in enumerate([(0, 0), (4, 4), (0, 4)]):
        x[y == k, :, r : r + 4, c : c + 4] += 1.5
    return x, y


@pytest.fixture(scope="module")
def pretrained():
    """A Tiny CNN trained briefly on a 4-class source task (so BN statistics and head are real)."""
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model = Tiny()
    x, y = _images(96, gen)
    y = (y + (x[:, 0, 4:, :4].mean((1, 2)) > 0).long()) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(15):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(2)
    splits = [_images(n, gen, shift=0.3) for n in (60, 30, 30)]
    return TargetData(*splits[0], *splits[1], *splits[2], num_classes=3)


@pytest.fixture(scope="module")
def tracker(pretrained):
    x, _ = _images(32, torch.Generator().manual_seed(3))
    y = pretrained(x).argmax(1)
    return ForgettingMeter(
        pretrained, head="head", blocks=BLOCKS, source_x=x, source_y=y, device=CPU, batch_size=16
    )


def _run(name, model, data, tracker=None, **kw):
    path = kw.pop("checkpoint_path", None)
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 16, "head_lr": 0.05, "lp_epochs": 3, **kw})
    return run_strategy(
        name, model, head="head", blocks=BLOCKS, data=data, tracker=tracker, config=cfg,
        device=CPU, progress=False, checkpoint_path=path,
    )  # fmt: skip


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def _same(a, b):
    return a[1] == b[1] and a[2] == b[2] and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


ENTRY_KEYS = {
    "name",
    "status",
    "message",
    "diverged",
    "overfitting",
    "config",
    "target",
    "forgetting",
    "cost",
    "curves",
}


def test_every_strategy_leaves_the_pretrained_model_untouched(pretrained, data, tracker):
    before = _snapshot(pretrained)
    for name in STRATEGY_NAMES:
        entry = _run(name, pretrained, data, tracker, epochs=1, lp_epochs=2)
        assert _same(before, _snapshot(pretrained)), name
        assert set(entry) == ENTRY_KEYS and entry["status"] == "ok" and entry["name"] == name
        json.dumps(entry, allow_nan=False)
        assert entry["cost"]["flops"] > 0 and entry["cost"]["peak_mem_kind"] == "process_rss"
        assert entry["forgetting"]["source_accuracy_before"] == 1.0
        assert set(entry["forgetting"]["cka"]) == set(BLOCKS)
        assert entry["config"]["schedule"] == "cosine" and entry["config"]["bn"] == "frozen"
        typed = StrategyEntry.from_dict(entry)
        assert typed.to_dict() == entry  # the typed entry reads and writes the file unchanged
        assert typed.target.val_accuracy == entry["target"]["val_accuracy"] and typed.finished
    assert all(
        len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0 for m in pretrained.modules()
    )


def test_frozen_parameters_and_bn_statistics_are_bit_identical(pretrained, data, tmp_path):
    ref = pretrained.state_dict()
    for name, frozen in [("partial", ("block1", "block2")), ("feature_extraction", BLOCKS)]:
        path = str(tmp_path / f"{name}.pt")
        entry = _run(name, pretrained, data, checkpoint_path=path, unfreeze=["block3"])
        state = torch.load(path, weights_only=True)
        assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
        for key, value in state.items():
            if key.split(".")[0] in frozen:  # weights AND running statistics of frozen blocks
                assert torch.equal(value, ref[key]), (name, key)
        assert entry["config"]["frozen"] == list(frozen)
        assert state["head.weight"].shape == (3, 8)
    assert not torch.equal(state["head.weight"][:, :3], ref["head.weight"][:3, :3])
    partial = torch.load(str(tmp_path / "partial.pt"), weights_only=True)
    assert not torch.equal(partial["block3.0.weight"], ref["block3.0.weight"])
    assert not torch.equal(partial["block3.1.running_mean"], ref["block3.1.running_mean"])


def test_bn_train_updates_statistics_of_frozen_blocks(pretrained, data, tmp_path):
    path = str(tmp_path / "p.pt")
    entry = _run("partial", pretrained, data, checkpoint_path=path, bn="train", unfreeze=["block3"])
    state, ref = torch.load(path, weights_only=True), pretrained.state_dict()
    assert not torch.equal(state["block1.1.running_mean"], ref["block1.1.running_mean"])
    assert torch.equal(state["block1.0.weight"], ref["block1.0.weight"])  # still frozen
    assert entry["config"]["bn"] == "train"
    assert entry["config"]["prefix_cache"] is False
    assert "bn='train'" in entry["config"]["prefix_cache_reason"]


def test_prefix_cache_gives_the_same_training_as_the_full_forward(pretrained, data, monkeypatch):
    cached = _run("partial", pretrained, data, unfreeze=["block3"])
    assert cached["config"]["prefix_cache"] is True
    assert [p["name"] for p in cached["cost"]["phases"]] == ["prefix_cache", "train"]
    monkeypatch.setattr(
        diagnose.training.strategy_run,
        "build_prefix_cache",
        lambda *a, **k: (None, "off"),
    )
    plain = _run("partial", pretrained, data, unfreeze=["block3"])
    assert plain["config"]["prefix_cache"] is False
    for a, b in zip(cached["curves"], plain["curves"], strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "agreement"):
            if b[key] is None:  # e.g. no tracker: agreement is not measured
                assert a[key] is None, key
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert cached["target"]["test_accuracy"] == plain["target"]["test_accuracy"]
    # Caching removes the frozen prefix from every step's FLOPs.
    assert cached["cost"]["flops_per_step"] < plain["cost"]["flops_per_step"]


@pytest.mark.parametrize(
    ("kw", "reason"),
    [({"skip": True}, "differs from the full model"), ({"dropout": True}, "dropout")],
)
def test_prefix_cache_refused_when_unsafe(data, kw, reason):
    torch.manual_seed(0)
    model = Tiny(**kw).eval()
    entry = _run("partial", model, data, unfreeze=["block3"])
    assert entry["status"] == "ok" and entry["config"]["prefix_cache"] is False
    assert reason in entry["config"]["prefix_cache_reason"]


def _strip(entry):
    e = copy.deepcopy(entry)
    for key in ("wall_s", "peak_mem_bytes"):
        e["cost"].pop(key)
    return e


@pytest.mark.parametrize("name", ["partial", "gradual_unfreeze", "lp_ft"])
def test_same_seed_same_results(pretrained, data, tracker, name):
    a = _run(name, pretrained, data, tracker, unfreeze=["block2", "block3"])
    b = _run(name, pretrained, data, tracker, unfreeze=["block2", "block3"])
    assert _strip(a) == _strip(b)
    c = _run(name, pretrained, data, tracker, unfreeze=["block2", "block3"], seed=1)
    assert _strip(a)["curves"] != _strip(c)["curves"]


def test_feature_extraction_runs_the_backbone_once(pretrained, data, tracker):
    calls = []
    handle = pretrained.block1.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        entry = _run("feature_extraction", pretrained, data, epochs=4, batch_size=16)
        assert len(calls) == 4 + 2 + 2  # one capture pass over 60 train, 30 val, 30 test images
        assert sum(calls) == 60 + 30 + 30
        calls.clear()
        entry = _run("feature_extraction", pretrained, data, tracker, epochs=4, batch_size=16)
        assert len(calls) == 4 + 2 + 2 + 2  # + the tracker's one pass over its 32 source images
    finally:
        handle.remove()
    curves = entry["curves"]
    assert [c["epoch"] for c in curves] == [1, 2, 3, 4]
    assert all(c["weight_drift"] == dict.fromkeys(BLOCKS, 0.0) for c in curves)
    assert all(c["agreement"] == 1.0 for c in curves)
    capture, head = entry["cost"]["phases"]
    assert (capture["name"], capture["steps"], head["name"], head["steps"]) == (
        "capture",
        8,
        "head",
        16,
    )
    # Linear(8, 3) on batch 16: forward 2*16*8*3, backward the weight gradient only (same again).
    assert head["flops_per_step"] == 2 * (2 * 16 * 8 * 3)
    assert entry["cost"]["flops"] == capture["flops"] + head["flops"]
    assert entry["cost"]["trainable_params"] == 8 * 3 + 3 and entry["cost"]["steps"] == 16


def test_l2_sp_with_a_huge_alpha_stays_closer_to_the_pretrained_weights(pretrained, data):
    free = _run("full_low_lr", pretrained, data, epochs=3, head_lr=0.2)
    pulled = _run("l2_sp", pretrained, data, epochs=3, head_lr=0.2, l2_sp_alpha=40.0)
    assert pulled["config"]["l2_sp_alpha"] == 40.0
    for block in BLOCKS:
        assert (
            pulled["curves"][-1]["weight_drift"][block]
            < 0.5 * free["curves"][-1]["weight_drift"][block]
        )


def test_an_absurd_lr_is_reported_as_divergence(pretrained, data, tracker):
    entry = _run("full_low_lr", pretrained, data, tracker, epochs=3, head_lr=1e6)
    assert entry["status"] == "diverged"
    div = entry["diverged"]
    assert isinstance(div["step"], int) and 1 <= div["step"] <= 12
    assert div["epoch"] == math.ceil(div["step"] / 4)
    assert div["lr"] > 1e4 and div["loss"] in ("nan", "inf", "-inf", "validation nan")
    assert "non-finite loss" in entry["message"]
    assert len(entry["curves"]) == div["epoch"] - 1
    assert entry["cost"]["steps"] == div["step"]
    json.dumps(entry, allow_nan=False)


def test_stages_of_gradual_unfreeze_and_lp_ft(pretrained, data):
    g = _run("gradual_unfreeze", pretrained, data, epochs=2)
    steps = [s["steps"] for s in g["config"]["stages"]]
    assert sum(steps) == g["cost"]["steps"] == 8 and steps == [2, 2, 2, 2]
    flops = [p["flops_per_step"] for p in g["cost"]["phases"]]
    assert flops == sorted(flops) and flops[0] < flops[-1]  # deeper backward as blocks unfreeze
    lp = _run("lp_ft", pretrained, data, epochs=2, lp_epochs=5)
    assert [c["epoch"] for c in lp["curves"]] == [0, 1, 2]
    assert [c["stage"] for c in lp["curves"]] == ["linear_probe", "fine_tune", "fine_tune"]
    assert [s["steps"] for s in lp["config"]["stages"]] == [20, 8]
    assert lp["config"]["lp_epochs"] == 5 and lp["cost"]["steps"] == 28
    assert lp["config"]["lr"] == dict.fromkeys([*BLOCKS, "head"], 0.05 * 0.1)


def test_test_accuracy_is_measured_on_the_best_validation_state(pretrained, data, tmp_path):
    path = str(tmp_path / "best.pt")
    entry = _run("discriminative", pretrained, data, epochs=4, head_lr=0.3, checkpoint_path=path)
    curves = entry["curves"]
    best = max(curves, key=lambda c: (c["val_accuracy"], -c["val_loss"]))
    assert entry["target"]["best_epoch"] == best["epoch"]
    assert entry["target"]["val_accuracy"] == best["val_accuracy"]
    assert entry["target"]["val_loss"] == best["val_loss"]
    model = Tiny(classes=3)
    model.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        acc = float((model.eval()(data.x_test).argmax(1) == data.y_test).double().mean())
    assert entry["target"]["test_accuracy"] == pytest.approx(acc)


def test_best_state_helper_keeps_the_best_epoch():
    best = BestState()
    seq = [(1, 0.5, 1.0), (2, 0.7, 0.9), (3, 0.7, 0.8), (4, 0.6, 0.5), (5, 0.7, 0.85)]
    kept = [best.offer(e, acc, loss, lambda e=e: f"state{e}") for e, acc, loss in seq]
    assert kept == [True, True, True, False, False]
    assert (best.epoch, best.state, best.val_accuracy, best.val_loss) == (3, "state3", 0.7, 0.8)
    assert best.offer(6, None, None, lambda: "x") is False


def test_overfitting_detector():
    falling = [1.0, 0.8, 0.6, 0.5, 0.4]
    assert detect_overfitting(falling, [0.9, 0.8, 0.7, 0.6, 0.5]) is None
    assert detect_overfitting(falling, [0.9, 0.8, 0.85, 0.8, 0.9]) is None  # one rise at a time
    out = detect_overfitting(falling, [0.9, 0.8, 0.85, 0.9, 1.0])
    assert out["epoch"] == 4 and "rose for 2 consecutive epochs" in out["detail"]
    assert (
        detect_overfitting([1.0, 0.8, 0.9, 1.0], [0.9, 0.8, 0.85, 0.9]) is None
    )  # train rises too
    assert detect_overfitting(falling[:4], [0.9, None, 0.95, 1.0]) is None
    assert detect_overfitting(falling[:3], [0.5, 0.6, 0.7], epochs=[0, 1, 2])["epoch"] == 2
    with pytest.raises(ValueError, match="same length"):
        detect_overfitting([1.0], [1.0, 2.0])


def test_overfitting_is_flagged_and_training_continues(pretrained, data):
    # 12 images with systematically wrong labels: memorising them fits train, hurts val.
    wrong = (data.y_train[:12] + 1) % 3
    small = TargetData(
        data.x_train[:12], wrong, data.x_val, data.y_val, data.x_test, data.y_test, 3
    )
    entry = _run("full_low_lr", pretrained, small, epochs=6, head_lr=0.2, batch_size=4)
    assert len(entry["curves"]) == 6 and entry["status"] == "ok"
    e = entry["overfitting"]["epoch"]
    vals = [c["val_loss"] for c in entry["curves"]]
    trains = [c["train_loss"] for c in entry["curves"]]
    assert vals[e - 1] > vals[e - 2] > vals[e - 3] and trains[e - 1] < trains[e - 2] < trains[e - 3]
    assert entry["overfitting"] == detect_overfitting(trains, vals)


def test_invalid_inputs(pretrained, data):
    bad = TargetData(
        data.x_train, data.y_train + 5, data.x_val, data.y_val, data.x_test, data.y_test, 3
    )
    with pytest.raises(ValueError, match=r"y_train must lie in \[0, 3\)"):
        _run("full_low_lr", pretrained, bad)
    with pytest.raises(ValueError, match="Unknown strategy 'full'"):
        _run("full", pretrained, data)
    with pytest.raises(
        ValueError, match=r"head 'pool' is a Sequential without an int 'in_features'"
    ):
        run_strategy("full_low_lr", pretrained, head="pool", blocks=BLOCKS, data=data, tracker=None,
                     config=TrainConfig(epochs=1), device=CPU, progress=False)  # fmt: skip


def test_demo_model_partial_and_feature_extraction(loaded_demo):
    model = loaded_demo.model
    before = _snapshot(model)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(40, 1, 32, 32, generator=gen)
    y = torch.arange(40) % 2
    x[y == 1, :, 8:24, 14:18] = 1.0  # a vertical bar marks class 1
    data = TargetData(x[:24], y[:24], x[24:32], y[24:32], x[32:], y[32:], num_classes=2)
    blocks = ["block1", "block2", "block3", "block4"]
    cfg = TrainConfig(epochs=1, batch_size=8, head_lr=0.05)
    for name in ("partial", "feature_extraction"):
        entry = run_strategy(
            name, model, head=loaded_demo.head, blocks=blocks, data=data, tracker=None,
            config=cfg, device=CPU, progress=False,
        )  # fmt: skip
        assert entry["status"] == "ok"
        assert entry["config"]["frozen"] == (blocks[:3] if name == "partial" else blocks)
        assert entry["config"]["prefix_cache"] is (name == "partial")
    assert entry["cost"]["trainable_params"] == 128 * 2 + 2
    assert _same(before, _snapshot(model))


def test_deferred_loss_checks_report_the_same_divergence_step(pretrained, data, monkeypatch):
    # On CUDA losses are checked in bulk (no per-step host sync); exercise that path on CPU.
    now = _run("full_low_lr", pretrained, data, epochs=3, head_lr=1e6)
    import diagnose.training.loop as loop

    monkeypatch.setattr(loop, "is_cuda", lambda device: True)
    later = _run("full_low_lr", pretrained, data, epochs=3, head_lr=1e6)
    assert later["status"] == now["status"] == "diverged"
    assert later["diverged"] == now["diverged"]
    assert later["curves"] == now["curves"]


def test_weights_that_blow_up_after_the_last_finite_loss_are_divergence(pretrained, data, tracker):
    # 1e8: the losses of epoch 1 are finite, the weights after its last step are not.
    entry = _run("full_low_lr", pretrained, data, tracker, epochs=2, head_lr=1e8)
    assert entry["status"] == "diverged" and entry["diverged"]["epoch"] == 1
    assert entry["target"]["test_accuracy"] is None and entry["curves"] == []
    json.dumps(entry, allow_nan=False)


def test_a_tiny_target_measures_forgetting_every_few_epochs_and_its_best_state(
    pretrained, data, tracker, tmp_path
):
    """6 training images against 32 source images: forgetting every 8th epoch (and the last),
    the best epoch's numbers measured on the restored best state."""
    from diagnose.measure.forgetting import forgetting_interval

    small = TargetData(data.x_train[:6], data.y_train[:6], data.x_val, data.y_val,
                       data.x_test, data.y_test, num_classes=3)  # fmt: skip
    every = forgetting_interval(tracker.n, 6)
    assert every == 8
    path = str(tmp_path / "best.pt")
    entry = _run("full_low_lr", pretrained, small, tracker, epochs=10, batch_size=16,
                 checkpoint_path=path)  # fmt: skip
    assert entry["config"]["forgetting_every"] == every
    measured = [c["epoch"] for c in entry["curves"] if c["agreement"] is not None]
    assert measured == [8, 10]
    best = Tiny(classes=3)
    best.load_state_dict(torch.load(path, weights_only=True))
    direct = tracker.measure(best)
    assert entry["forgetting"]["agreement"] == direct["agreement"]
    assert entry["forgetting"]["cka"] == pytest.approx(direct["cka"])


def test_source_outputs_that_are_not_finite_stop_the_run_as_diverged(pretrained, data, tracker):
    """compare's per-epoch measurement: a model whose source outputs turn non-finite has
    forgotten everything, even while its target loss is still finite."""

    class Failing:
        def __init__(self, meter):
            self.meter, self.calls = meter, 0

        def __getattr__(self, name):
            return getattr(self.meter, name)

        def measure(self, model):
            self.calls += 1
            out = self.meter.measure(model)
            if self.calls >= 2:
                out = {"source_accuracy": None, "agreement": None, "cka": {}, "diverged": True}
            return out

    entry = _run("full_low_lr", pretrained, data, Failing(tracker), epochs=4)
    assert entry["diverged"]["loss"] == "source outputs not finite"
    assert entry["diverged"]["epoch"] == 2
    assert [c["epoch"] for c in entry["curves"]] == [1]
