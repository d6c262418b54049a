"""diagnose.ForgettingTracker: forgetting checks in the user's own loop (issue 11).

Known values: the pretrained model itself has agreement 1, its own source
accuracy, CKA 1 and drift 0; a block scaled by 1.1 drifts by exactly 0.1
(``||1.1 w - w|| / ||w||``); a swapped head does not change what the ORIGINAL
head sees. Errors come at construction, one line naming the parameter.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import single_thread
from torch import nn

import diagnose
from diagnose.cli import main
from diagnose.models import replace_module

# CKA of identical float32 features is 1 up to float32 rounding of the Gram terms.
F32 = 1e-6


@pytest.fixture(scope="module")
def demo():
    return diagnose.load_model("demo", progress=False)


@pytest.fixture(scope="module")
def tracker_factory(demo):
    def make(**kwargs):
        with single_thread():
            return diagnose.ForgettingTracker(demo, "demo:digits", n_images=48, **kwargs)

    return make


def test_the_pretrained_model_has_forgotten_nothing(demo, tracker_factory):
    tracker = tracker_factory()
    with single_thread():
        m = tracker.measure(demo.model)
    assert m["step"] == 1
    assert m["agreement"] == 1.0
    assert m["source_accuracy"] == tracker.reference_source_accuracy
    assert m["source_accuracy_drop"] == 0.0 and m["forgetting"] == 0.0
    assert set(m["cka"]) == set(tracker.blocks)
    assert all(abs(v - 1.0) < F32 for v in m["cka"].values())
    assert m["drift"] == {b: 0.0 for b in tracker.blocks}
    assert tracker.exceeded is False


def test_a_swapped_head_keeps_the_original_head_s_view(demo, tracker_factory):
    tracker = tracker_factory()
    model = copy.deepcopy(demo.model)
    replace_module(model, demo.head, nn.Linear(model.get_submodule(demo.head).in_features, 3))
    with single_thread():
        m = tracker.measure(model, step=7)
    assert m["step"] == 7
    assert m["agreement"] == 1.0 and m["source_accuracy_drop"] == 0.0
    assert m["drift"] == {b: 0.0 for b in tracker.blocks}


def test_drift_of_a_scaled_block_is_the_scale_minus_one(demo, tracker_factory):
    tracker = tracker_factory()
    model = copy.deepcopy(demo.model)
    block = tracker.blocks[0]
    with torch.no_grad():
        for p in model.get_submodule(block).parameters():
            p.mul_(1.1)
    with single_thread():
        m = tracker.measure(model)
    # ||1.1 w - w|| / ||w|| = 0.1 exactly; the parameters are float32 (rounding ~1e-7 each).
    assert m["drift"][block] == pytest.approx(0.1, abs=F32)
    assert all(m["drift"][b] == 0.0 for b in tracker.blocks[1:])


def test_the_budget_flags_the_first_step_over_it_and_summarises(demo, tracker_factory, tmp_path):
    tracker = tracker_factory(max_forgetting=0.02)
    model = copy.deepcopy(demo.model)
    torch.manual_seed(0)
    with single_thread():
        tracker.measure(model, step=10)  # unchanged: within
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5 * torch.randn_like(p))  # wrecks the features
        m = tracker.measure(model, step=20)
        tracker.measure(model, step=30)
    assert m["forgetting"] > 0.02 and m["over_budget"]
    assert (tracker.exceeded, tracker.exceeded_at) == (True, 20)
    data = tracker.to_dict()
    assert data["kind"] == "track" and [r["step"] for r in data["history"]] == [10, 20, 30]
    budget_lines = [w for w in data["warnings"] if "forgetting budget" in w]
    assert len(budget_lines) == 1 and "2 of 3 measured steps, first at step 20" in budget_lines[0]

    results_path, report_path = tracker.save(tmp_path / "track")
    saved = json.loads(results_path.read_text())
    assert saved["history"][1]["forgetting"] == pytest.approx(m["forgetting"])
    html = report_path.read_text()
    assert "Forgetting during fine-tuning" in html and "first at step 20" in html
    assert html.count("data:image/png;base64,") == 3  # forgetting, CKA, drift
    # `diagnose report` renders a saved track the same way.
    report_path.unlink()
    assert main(["report", str(results_path), "--quiet"]) == 0
    assert "Every measurement" in report_path.read_text()


def test_unlabelled_source_is_tracked_label_free(demo):
    with single_thread():
        tracker = diagnose.ForgettingTracker(
            demo, "demo:digits", n_images=32, source_labels=False, max_forgetting=0.5
        )
        m = tracker.measure(demo.model)
    assert tracker.reference_source_accuracy is None
    assert m["source_accuracy"] is None and m["forgetting_measure"] == "disagreement"
    assert m["forgetting"] == 0.0  # 1 - agreement


class FlatMLP(nn.Module):
    """Needs exactly 3x8x8 inputs: a flattened Linear."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(x))


def test_errors_come_at_construction_and_name_the_parameter(demo):
    with pytest.raises(ValueError, match=r"'head' parameter names 'nope'"):
        diagnose.ForgettingTracker(demo, "demo:digits", head="nope")
    with pytest.raises(ValueError, match=r"'n_images' parameter .* at least 2"):
        diagnose.ForgettingTracker(demo, "demo:digits", n_images=1)
    with pytest.raises(ValueError, match=r"'max_forgetting' .* \[0, 1\]"):
        diagnose.ForgettingTracker(demo, "demo:digits", max_forgetting=2)
    with pytest.raises(ValueError) as err:
        diagnose.ForgettingTracker(FlatMLP(), "demo:digits", image_size=12, layers=["body"])
    message = str(err.value)
    assert "do not fit the model" in message and "'image_size'" in message
    assert "\n" not in message
    with pytest.raises(TypeError, match="'model' parameter of measure"):
        diagnose.ForgettingTracker(demo, "demo:digits", n_images=8).measure("not a model")


def _diverge(model, steps=3):
    """The issue's case: the demo CNN left in eval mode, SGD at lr 0.05 on standard-normal
    noise images with random labels; the loss goes 50 -> 1e7 -> NaN in three steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(32, 1, 32, 32, generator=gen)
        y = torch.randint(0, 10, (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("budget", [0.05, None])
def test_a_diverged_model_is_total_forgetting_not_silence(demo, tracker_factory, budget):
    tracker = tracker_factory(max_forgetting=budget)
    model = copy.deepcopy(demo.model).eval()
    with single_thread():
        tracker.measure(model, step=1)
        with torch.no_grad():
            model.get_submodule(tracker.blocks[0])[0].weight.fill_(float("nan"))
        m = tracker.measure(model, step=2)
    assert m["diverged"] is True and m["over_budget"] is True
    assert m["agreement"] is None and m["source_accuracy"] is None
    assert m["forgetting"] == pytest.approx(tracker.reference_source_accuracy)  # all of it
    assert (tracker.exceeded, tracker.exceeded_at) == (True, 2)
    lines = [w for w in tracker.to_dict()["warnings"] if "diverged" in w]
    assert len(lines) == 1 and "step 2" in lines[0]
    with single_thread():
        tracker.measure(model, step=3)
        tracker.measure(model, step=4)
    # Still one line, however long the run goes on diverged: the first step and a count.
    (line,) = [w for w in tracker.to_dict()["warnings"] if "diverged" in w]
    assert "by step 2 (and at 2 later of the 4 measurements)" in line


def test_the_issue_s_diverging_loop_raises_the_alarm(demo, tracker_factory):
    tracker = tracker_factory(max_forgetting=0.05)
    model = copy.deepcopy(demo.model).eval()
    with single_thread():
        _diverge(model, steps=3)
        m = tracker.measure(model, step=3)
    assert m["diverged"] and tracker.exceeded


def test_a_peft_model_is_tracked_without_changing_the_user_s_code(demo, tracker_factory):
    # The user wraps their model with peft themselves and hands the PeftModel over as is.
    peft = pytest.importorskip("peft")
    tracker = tracker_factory()
    model = copy.deepcopy(demo.model)
    targets = [f"{b}.0" for b in tracker.blocks]  # the demo CNN's convolutions
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets))
    with single_thread():
        m = tracker.measure(wrapped)  # B starts at zero: nothing has changed yet
    assert m["agreement"] == 1.0 and m["source_accuracy_drop"] == 0.0
    assert m["drift"] == {b: 0.0 for b in tracker.blocks}
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    merged = copy.deepcopy(wrapped).merge_and_unload()  # peft's own merge, the reference
    with single_thread():
        adapted, plain = tracker.measure(wrapped), tracker.measure(merged)
    assert all(adapted["drift"][b] > 0 for b in tracker.blocks)
    # The tracker sees the adapter applied: the same as the merged plain model (float32).
    assert adapted["drift"] == pytest.approx(plain["drift"], rel=1e-4)
    assert adapted["agreement"] == plain["agreement"]
