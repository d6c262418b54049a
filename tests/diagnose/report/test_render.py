"""The HTML report: every section present, user text escaped, no network, robust to gaps."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from diagnose.core.schema import SCHEMA_VERSION
from diagnose.report.render import render_html, render_report_file, write_outputs

EVIL = "<img src=x onerror=alert(1)>"
SECTIONS = [
    "summary",
    "data",
    "image-stats",
    "probes",
    "gap",
    "transferability",
    "lr-find",
    "environment",
]


def _results():
    layers = []
    for i, name in enumerate(["block1", "block2", "block3"]):
        p = 0.5 + 0.1 * i
        layers.append(
            {
                "name": name,
                "dim": 16 * (i + 1),
                "probe": {
                    "target": {"accuracy": p, "ci": [p - 0.05, p + 0.05]},
                    "control": {"accuracy": 0.3, "ci": [0.25, 0.35]},
                    "source": {"accuracy": 0.9, "ci": [0.85, 0.95]},
                },
                "gap": {
                    "pad": 1.5 - 0.2 * i,
                    "auc": 0.9,
                    "mmd2": 0.1,
                    "mmd_pvalue": 0.005,
                    "frechet": 3.0,
                    "coral": 0.01,
                },
            }
        )
    return {
        "schema": SCHEMA_VERSION,
        "kind": "assess",
        "model": {
            "name": "demo",
            "head": "head",
            "num_source_classes": 2,
            "notes": [],
            "num_parameters": 1000,
        },
        "source": {
            "name": "src",
            "description": "d",
            "n_used": 10,
            "classes": ["a", EVIL],
            "class_counts": {"a": 5, EVIL: 5},
            "channels": 1,
            "native_size": [8, 8],
        },
        "target": {
            "name": "<script>alert('x')</script>",
            "description": "t",
            "n_used": 10,
            "classes": ["a", EVIL],
            "class_counts": [4, 6],
            "channels": 1,
            "native_size": [8, 8],
        },
        "preprocessing": {"image_size": [8, 8], "channels": 1, "normalize": None, "notes": ["n"]},
        "layers": layers,
        "transferability": {
            "layer": "block3",
            "logme": 0.5,
            "h_score": 2.0,
            "leep": -0.5,
            "nce": -0.4,
        },
        "image_stats": {
            "drift": [
                {
                    "statistic": "brightness",
                    "source_mean": 0.1,
                    "target_mean": 0.9,
                    "ks": 1.0,
                    "p_value": 1e-9,
                }
            ]
        },
        "lr_find": {
            "suggested_lr": 0.01,
            "lrs": [1e-4 * 1.2**i for i in range(40)],
            "losses": [2.0 - 0.02 * i for i in range(40)],
            "stop_reason": "reached end_lr",
        },
        "samples": {"source": [{"label": EVIL, "png": "iVBORw0KGgo="}]},
        "recommendation": {
            "strategy": "partial",
            "unfreeze": ["block3"],
            "lr": {"head": 0.01, "block3": 0.001},
            "epochs": 10,
            "weight_decay": 1e-4,
            "optimizer": "SGD",
            "confidence": "medium",
            "reasons": [f"because {EVIL}"],
            "would_change_if": ["x"],
        },
        "warnings": [f"warn {EVIL}"],
        "environment": {"torch": "x", "seed": 0, "wall_s": 1.5},
    }


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.tags, self.urls = set(), [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k == "id":
                self.ids.add(v)
            if k in ("src", "href") and v:
                self.urls.append(v)


def test_report_has_every_section_and_embedded_images():
    html = render_html(_results())
    parser = _Collector()
    parser.feed(html)
    assert set(SECTIONS) <= parser.ids
    assert parser.tags.count("img") >= 4  # 3 plots + a sample (+ class balance)
    assert all(u.startswith("data:") for u in parser.urls)
    assert not re.search(r"https?://", html)
    assert "script" not in parser.tags
    assert "could not be drawn" not in html


def test_user_text_is_escaped():
    html = render_html(_results())
    assert EVIL not in html and "<script>alert" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_missing_keys_render_without_crashing():
    html = render_html({"schema": SCHEMA_VERSION, "kind": "assess"})
    assert "Transfer assessment" in html and "No recommendation" in html


def test_write_outputs_and_rerender(tmp_path):
    res_path, rep_path = write_outputs(_results(), tmp_path / "out")
    assert res_path.exists() and rep_path.exists()
    again = render_report_file(res_path, tmp_path / "again.html")
    assert again.read_text().count("<section") == len(SECTIONS)


def test_environment_records_render_as_key_value_text():
    results = _results()
    results["environment"]["threads"] = {"cpus": 2, "threads_min": 1, "policy": EVIL}
    html = render_html(results)
    assert "cpus 2 · threads_min 1 · policy" in html
    assert "{'cpus'" not in html and EVIL not in html  # plain text, and still escaped
