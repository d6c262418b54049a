"""assess end to end on the demo model and domains: the JSON contract and the shift signatures."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import torch

from diagnose.cli import main
from diagnose.core import LayerResult, Recommendation
from diagnose.data.domains import load_domain
from diagnose.models.loading import load_model
from diagnose.workflows.assessment import assess

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
        demo,
        "demo:digits",
        "demo:digits-noise",
        out=out,
        progress=False,
        n_permutations=50,
        trial_budget=0,  # the race is tested in test_race.py
    )


@pytest.fixture(scope="module")
def relabel(demo):
    return assess(
        demo,
        "demo:digits",
        "demo:digits-relabel",
        progress=False,
        n_permutations=50,
        trial_budget=0,
    )


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
    # The file is the typed records' to_dict(): reading and writing changes nothing.
    assert [LayerResult.from_dict(x).to_dict() for x in data["layers"]] == data["layers"]
    assert Recommendation.from_dict(rec).to_dict() == rec
    assert (
        LayerResult.from_dict(data["layers"][0]).accuracy("target")
        == (data["layers"][0]["probe"]["target"]["accuracy"])
    )
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
    assert relabel.recommendation.strategy != "feature_extraction"


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
    res = assess(
        demo, None, "demo:digits-invert", max_samples=300, progress=False, trial_budget=0
    ).to_dict()
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
        trial_budget=0,
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
        trial_budget=0,
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
            "--trial-budget",
            "0",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    data = _strict_json(tmp_path / "results.json")
    assert data["target"]["n_used"] == 300
    assert any("normalisation" in w for w in data["warnings"])  # inverted contrast is flagged


def test_max_memory_puts_features_on_disk_with_the_same_results(demo, tmp_path, monkeypatch):
    """A tiny budget streams both passes to temporary files; every number stays the same."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    kw = {"max_samples": 150, "n_permutations": 20, "progress": False, "trial_budget": 0}
    ram = assess(demo, "demo:digits", "demo:digits-rotate", **kw).results
    disk = assess(demo, "demo:digits", "demo:digits-rotate", max_memory="1KB", **kw).results
    # The temporary stores are gone. (torch's first optimiser in a process imports
    # torch._dynamo, which makes its own cache folder in the temporary directory.)
    assert [p for p in scratch.iterdir() if not p.name.startswith("torchinductor_")] == []
    assert ram["capture"]["max_memory_bytes"] is None
    assert ram["capture"]["target"]["storage"] == ram["capture"]["source"]["storage"] == "memory"
    cap = disk["capture"]
    assert cap["max_memory_bytes"] == 1000 and cap["per_pass_bytes"] == 500
    assert cap["target"]["storage"] == cap["source"]["storage"] == "disk"
    assert cap["target"]["n"] == 150 and cap["target"]["bytes"] == ram["capture"]["target"]["bytes"]
    # pretrained + control, block1..block4 (16+32+64+128), and the 10 logits, float32
    assert cap["target"]["bytes"] == 150 * 4 * (2 * 240 + 10)
    assert cap["subsample"] == {
        "gap_max_samples": 2000,
        "transferability_max_samples": 20000,
        "cka_batch_size": 1024,
        "rgn_images": 64,
    }
    for a, b in zip(ram["layers"], disk["layers"], strict=True):
        for side in ("target", "control", "source"):
            pa, pb = a["probe"][side], b["probe"][side]
            assert pb["accuracy"] == pytest.approx(pa["accuracy"], abs=0.02), (a["name"], side)
            assert pb["n_train"] == pa["n_train"] and pb["n_test"] == pa["n_test"]
        assert b["gap"] == a["gap"]  # computed on the same in-memory subsample
        assert (b["gap"]["n_source"], b["gap"]["n_source_total"]) == (150, 150)
        assert b["gap"]["max_samples"] == 2000
        assert b["cka_control"] == a["cka_control"]
        assert b["cka_control"]["batch_size"] == 1024 and b["cka_control"]["n"] == 150
    assert disk["transferability"] == ram["transferability"]
    assert disk["transferability"]["n"] == disk["transferability"]["n_total"] == 150
    assert disk["lr_find"] == ram["lr_find"]
    assert disk["head_accuracy"] == ram["head_accuracy"]


def test_control_cka_matches_the_debiased_formula_and_streams():
    """One minibatch is the debiased CKA written out in numpy; many estimate it."""
    import numpy as np

    from diagnose.measure.layers import control_cka

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = x @ rng.normal(size=(5, 4)) + 0.5 * rng.normal(size=(300, 4))

    def debiased_hsic(a, b):  # Song et al. 2012, written directly
        n = a.shape[0]
        k, l_ = a @ a.T, b @ b.T
        np.fill_diagonal(k, 0.0)
        np.fill_diagonal(l_, 0.0)
        one = np.ones(n)
        return (
            np.trace(k @ l_)
            + (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ l_ @ one)
        ) / (n * (n - 3))

    expected = debiased_hsic(x, y) / np.sqrt(debiased_hsic(x, x) * debiased_hsic(y, y))
    one = control_cka(x, y, seed=3, batch_size=1024)
    assert one["cka"] == pytest.approx(expected, rel=1e-9) and one["n_batches"] == 1
    many = control_cka(x, y, seed=3, batch_size=64)
    assert many["n_batches"] == 4 and many["n"] == 300 and many["batch_size"] == 64
    assert many["cka"] == pytest.approx(expected, abs=0.05)
    assert control_cka(x[:3], y[:3], seed=0) is None


@pytest.mark.parametrize("bad", ["lots", "2XB", "0", "-5MB"])
def test_cli_max_memory_rejects_bad_sizes_in_one_line(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["assess", "--model", "demo", "--target", "demo:digits", f"--max-memory={bad}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-memory" in err and "e.g. --max-memory 2GB" in err
    assert repr(bad) in err
