"""The post-training forgetting audit: it reproduces compare's forgetting numbers,
sees no forgetting where there is none, loads checkpoints safely and renders its report."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from diagnose.core import Audit
from diagnose.report.render import render_html
from diagnose.workflows.checkpoint_audit import CKA_UNCHANGED, audit, verdict
from diagnose.workflows.comparison import compare

SRC, TGT = "demo:digits", "demo:digits-noise"
FAST = dict(max_samples=200, progress=False, device="cpu")


@pytest.fixture(scope="module")
def comparison(loaded_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit-cmp")
    res = compare(
        loaded_demo,
        SRC,
        TGT,
        strategies="full_low_lr,feature_extraction",
        epochs=1,
        max_samples=200,
        with_assessment=False,
        lr=0.02,
        save_checkpoints=True,
        progress=False,
        device="cpu",
        out=out,
    )
    return {s["name"]: s for s in res.strategies}, out


def _drift(w, w0):
    num = sum(
        float(np.sum((a.detach().double().numpy() - b.detach().double().numpy()) ** 2))
        for a, b in zip(w, w0)
    )
    den = sum(float(np.sum(b.detach().double().numpy() ** 2)) for b in w0)
    return np.sqrt(num) / np.sqrt(den)


def test_audit_reproduces_compare_forgetting(loaded_demo, comparison, tmp_path):
    by, out = comparison
    f = by["full_low_lr"]["forgetting"]
    res = audit(loaded_demo, out / "checkpoints" / "full_low_lr.pt", SRC, TGT, out=tmp_path, **FAST)
    d = json.loads((tmp_path / "results.json").read_text())
    assert d["kind"] == "audit" and d["schema"] == "1.0"
    typed = Audit.from_dict(d)
    assert typed.to_dict() == d  # the file is the typed record's to_dict()
    assert [x.name for x in typed.layers] == d["blocks"] and typed.verdict == d["verdict"]
    assert d["finetuned"]["head_replaced"] is False
    # Same source images, same model state: agreement and accuracy are identical.
    assert d["agreement"] == f["agreement"]
    assert d["source_accuracy"]["finetuned"] == f["source_accuracy"]
    assert d["source_accuracy"]["pretrained"] == f["source_accuracy_before"]
    assert d["source_accuracy"]["drop"] == pytest.approx(f["source_accuracy_drop"], abs=1e-12)
    for layer in res.layers:
        # the same float32 reductions on the same weights, read back from a checkpoint
        assert layer["weight_drift"] == pytest.approx(f["weight_drift"][layer["name"]], rel=1e-6)
        assert layer["cka_source"] == pytest.approx(f["cka"][layer["name"]], abs=1e-6)
        assert 0.0 <= layer["cka_target"] <= 1.0 + 1e-9
    assert any(layer["weight_drift"] > 0 for layer in res.layers)
    # Per-class rows add back up to the overall accuracies.
    rows = d["source_accuracy"]["per_class"]
    n = sum(r["n"] for r in rows)
    assert n == d["source"]["n_eval"] == 128
    for key in ("pretrained", "finetuned"):
        total = sum(r[key] * r["n"] for r in rows) / n
        assert total == pytest.approx(d["source_accuracy"][key], abs=1e-12)
    assert all(r["drop"] == pytest.approx(r["pretrained"] - r["finetuned"]) for r in rows)
    assert [r["class"] for r in rows] == [str(c) for c in range(10)]


def test_feature_extraction_checkpoint_forgot_nothing(loaded_demo, comparison):
    _, out = comparison
    res = audit(loaded_demo, out / "checkpoints" / "feature_extraction.pt", SRC, TGT, **FAST)
    d = res.to_dict()
    assert d["agreement"] == 1.0
    assert d["source_accuracy"]["drop"] == 0.0
    for layer in d["layers"]:
        assert layer["weight_drift"] == 0.0
        assert layer["cka_source"] == pytest.approx(1.0, abs=1e-9)
        assert layer["cka_target"] == pytest.approx(1.0, abs=1e-9)
    assert res.verdict.startswith("nothing measurable was forgotten")
    assert "drift 0" in res.verdict


def test_pretrained_weights_give_zero_drift(loaded_demo, tmp_path):
    path = tmp_path / "same.pt"
    torch.save(loaded_demo.model.state_dict(), path)
    d = audit(loaded_demo, path, SRC, **FAST).to_dict()
    assert d["target"] is None
    assert all(layer["weight_drift"] == 0.0 for layer in d["layers"])
    assert all(layer["cka_target"] is None for layer in d["layers"])
    assert d["agreement"] == 1.0


def test_new_head_is_replaced_and_forgetting_located(loaded_demo, tmp_path):
    """A 3-class head (as a fine-tuned checkpoint has) and a perturbed last block."""
    net = copy.deepcopy(loaded_demo.model)
    head = net.get_submodule(loaded_demo.head)
    setattr(net, loaded_demo.head, nn.Linear(head.in_features, 3))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in net.get_submodule("block4").named_parameters():
            p.add_(p.std() * 2 * torch.randn(p.shape, generator=gen))
    path = tmp_path / "ft.pt"
    torch.save(net.state_dict(), path)
    d = audit(loaded_demo, path, SRC, TGT, **FAST).to_dict()
    assert d["finetuned"] == {
        "path": str(path),
        "format": "state dict",
        "head_replaced": True,
        "head_outputs": 3,
    }
    by = {layer["name"]: layer for layer in d["layers"]}
    pre = dict(loaded_demo.model.named_parameters())
    post = dict(net.named_parameters())
    names = [n for n in pre if n.startswith("block4.")]
    expected = _drift([post[n] for n in names], [pre[n] for n in names])
    # float32 reductions against a float64 transcription: a few float32 epsilons (1.2e-7)
    assert by["block4"]["weight_drift"] == pytest.approx(expected, rel=1e-5)
    assert all(by[b]["weight_drift"] == 0.0 for b in ("block1", "block2", "block3"))
    assert by["block1"]["cka_source"] == pytest.approx(1.0, abs=1e-9)
    assert by["block4"]["cka_source"] < CKA_UNCHANGED
    assert d["verdict"].startswith("forgetting is concentrated in block4")
    assert "early blocks block1-block3 unchanged" in d["verdict"]


def test_wrong_architecture_names_keys(loaded_demo, tmp_path):
    state = dict(loaded_demo.model.state_dict())
    dropped = next(k for k in state if k.startswith("block2."))
    state.pop(dropped)
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=rf"missing key\(s\) \({dropped}.*unexpected key\(s\) \(extra\.weight"
    ):
        audit(loaded_demo, path, SRC, **FAST)


def test_pickled_model_refused_unless_trusted(loaded_demo, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(loaded_demo.model, path)
    with pytest.raises(ValueError, match="holds pickled Python objects"):
        audit(loaded_demo, path, SRC, **FAST)
    d = audit(loaded_demo, path, SRC, trust_checkpoint=True, **FAST).to_dict()
    assert d["agreement"] == 1.0


def test_verdict_from_numbers():
    layers = [
        {"name": "b1", "cka_source": 0.995, "weight_drift": 0.01},
        {"name": "b2", "cka_source": 0.80, "weight_drift": 0.2},
    ]
    assert verdict(layers, {"drop": 0.123}, 0.8) == (
        "forgetting is concentrated in b2; source accuracy -12.3 points; "
        "original-head agreement 80.0%; early blocks b1 unchanged (CKA > 0.98)"
    )
    spans = verdict([dict(layers[1], name="a"), layers[1]], {"drop": None}, 0.5)
    assert spans.startswith("forgetting spans every block (a-b2)")


def test_report_sections_and_escaping(loaded_demo, comparison, tmp_path):
    _, out = comparison
    d = audit(loaded_demo, out / "checkpoints" / "full_low_lr.pt", SRC, TGT, **FAST).to_dict()
    d["source_accuracy"]["per_class"][0]["class"] = "<script>alert(1)</script>"
    d["verdict"] = "<b>x</b> & y"
    html = render_html(d)
    ids = ['id="verdict"', 'id="cka"', 'id="per-class"', 'id="drift"', 'id="environment"']
    positions = [html.index(i) for i in ids]
    assert positions == sorted(positions)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in html
    assert html.count("data:image/png;base64,") == 2
    assert "http://" not in html and "https://" not in html


def test_a_checkpoint_with_non_finite_weights_is_a_diverged_total_forgetting(loaded_demo, tmp_path):
    """Before: NaN weights in block2 left CKA measurable only in block1, drift 0 elsewhere,
    and the verdict read "nothing measurable was forgotten"."""
    from diagnose.cli import main

    net = copy.deepcopy(loaded_demo.model)
    with torch.no_grad():
        net.block2[0].weight.fill_(float("nan"))
    path = tmp_path / "nan.pt"
    torch.save(net.state_dict(), path)
    res = audit(loaded_demo, str(path), "demo:digits", progress=False).to_dict()
    assert res["diverged"] is True
    assert res["verdict"].startswith("the fine-tuned model diverged (non-finite weights in block2)")
    assert any("diverged" in w and "total forgetting" in w for w in res["warnings"])
    out = tmp_path / "cli"
    code = main(["audit", "--model", "demo", "--finetuned", str(path), "--source", "demo:digits",
                 "--out", str(out), "--quiet"])  # fmt: skip
    saved = json.loads((out / "results.json").read_text())
    assert code == 0 and saved["diverged"] is True and "diverged" in saved["verdict"]
    assert "diverged" in (out / "report.html").read_text()
