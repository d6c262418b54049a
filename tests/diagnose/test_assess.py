"""assess end to end on the demo model and domains: the JSON contract and the shift signatures."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import torch

from diagnose.assess import assess
from diagnose.cli import main
from diagnose.data import load_domain
from diagnose.models import load_model

TOP_KEYS = {
    "schema",
    "kind",
    "model",
    "source",
    "target",
    "layers",
    "transferability",
    "image_stats",
    "lr_find",
    "recommendation",
    "warnings",
    "environment",
    "preprocessing",
}


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", progress=False)


@pytest.fixture(scope="module")
def noise(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("noise")
    return assess(
        demo, "demo:digits", "demo:digits-noise", out=out, progress=False, n_permutations=50
    )


@pytest.fixture(scope="module")
def relabel(demo):
    return assess(demo, "demo:digits", "demo:digits-relabel", progress=False, n_permutations=50)


def _strict_json(path):
    def bad(value):
        raise AssertionError(f"non-standard JSON constant {value}")

    return json.loads(path.read_text(), parse_constant=bad)


def test_results_json_contract(noise):
    data = _strict_json(noise.results_path)
    assert TOP_KEYS <= set(data)
    assert data["kind"] == "assess" and data["schema"].startswith("1.")
    assert [layer["name"] for layer in data["layers"]] == ["block1", "block2", "block3", "block4"]
    for layer in data["layers"]:
        assert set(layer["probe"]) == {"target", "control", "source"}
        for which in ("target", "control", "source"):
            p = layer["probe"][which]
            assert 0 <= p["accuracy"] <= 1 and p["ci"][0] <= p["accuracy"] <= p["ci"][1]
        assert {"pad", "mmd2", "mmd_pvalue", "frechet"} <= set(layer["gap"])
    assert set(data["transferability"]) >= {"logme", "h_score", "leep", "nce"}
    assert data["lr_find"]["suggested_lr"] > 0
    assert len(data["lr_find"]["lrs"]) == len(data["lr_find"]["losses"])
    rec = data["recommendation"]
    assert set(rec) >= {"strategy", "unfreeze", "lr", "epochs", "reasons"}
    env = data["environment"]
    assert env["seed"] == 0 and env["torch"] == torch.__version__ and env["wall_s"] > 0
    assert data["preprocessing"]["image_size"] == [32, 32]
    assert data["source"]["n_used"] > 0 and data["target"]["n_test"] > 0


def test_input_level_shift_shows_gap_at_the_first_block(noise):
    layers = noise.to_dict()["layers"]
    assert layers[0]["gap"]["pad"] > 1.0
    assert layers[0]["gap"]["mmd_pvalue"] < 0.05
    drift = {r["statistic"]: r for r in noise.to_dict()["image_stats"]["drift"]}
    assert drift["contrast"]["p_value"] < 0.01


def test_output_level_shift_shows_low_last_layer_probe(relabel):
    layers = relabel.to_dict()["layers"]
    acc = [layer["probe"]["target"]["accuracy"] for layer in layers]
    assert layers[0]["gap"]["pad"] < 0.5  # same images as the source distribution
    assert acc[-1] < max(acc) - 0.05
    assert relabel.recommendation["strategy"] != "feature_extraction"


def test_pretrained_beats_random_control_on_source_like_data(noise):
    last = noise.to_dict()["layers"][-1]["probe"]
    assert last["target"]["accuracy"] > last["control"]["accuracy"]
    assert noise.to_dict()["head_accuracy"]["source_head_accuracy"] > 0.9


def test_report_parses_and_has_sections(noise):
    ids = set()

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            ids.update(v for k, v in attrs if k == "id")

    P().feed(noise.report_path.read_text())
    assert {
        "summary",
        "data",
        "image-stats",
        "probes",
        "gap",
        "transferability",
        "lr-find",
        "environment",
    } <= ids
    assert noise.report_path.stat().st_size < 5 * 1024 * 1024


def test_no_source_skips_gap_with_a_note(demo):
    res = assess(demo, None, "demo:digits-invert", max_samples=300, progress=False).to_dict()
    assert all(layer["gap"] is None for layer in res["layers"])
    assert all(layer["probe"]["source"] is None for layer in res["layers"])
    assert any("No source data" in w for w in res["warnings"])
    assert res["layers"][-1]["probe"]["target"]["accuracy"] is not None


def test_assess_has_no_side_effect_on_the_model(demo):
    before = {k: v.clone() for k, v in demo.model.state_dict().items()}
    assess(
        demo,
        "demo:digits",
        "demo:digits-rotate",
        max_samples=200,
        progress=False,
        n_permutations=20,
    )
    after = demo.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not demo.model.training


def test_plain_module_and_domain_objects(demo):
    target = load_domain("demo:digits-noise")
    res = assess(
        demo.model,
        load_domain("demo:digits"),
        target,
        max_samples=200,
        progress=False,
        n_permutations=20,
        normalize="none",
    )
    assert res.to_dict()["model"]["head"] == "head"


def test_cli_assess_writes_results_and_report(tmp_path, capsys):
    code = main(
        [
            "assess",
            "--model",
            "demo",
            "--source",
            "demo:digits",
            "--target",
            "demo:digits-invert",
            "--max-samples",
            "300",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    data = _strict_json(tmp_path / "results.json")
    assert data["target"]["n_used"] == 300
    assert any("normalisation" in w for w in data["warnings"])  # inverted contrast is flagged
