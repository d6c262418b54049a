"""Comparison plots and report sections: PNGs, data-driven takeaways, escaping, partial files."""

from __future__ import annotations

import base64
import copy
import itertools
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from diagnose.core.names import STRATEGY_LABELS, strategy_label
from diagnose.core.schema import SCHEMA_VERSION
from diagnose.decide.select import select_strategy
from diagnose.report import plots_forgetting as _plots_forgetting
from diagnose.report.plots_compare import _pareto, tradeoff_plot
from diagnose.report.plots_forgetting import cka_heatmap, forgetting_curves_plot
from diagnose.report.plots_training import training_curves_plot
from diagnose.report.render import render_html

PNG = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>x</script>"
BLOCKS = ["block1", "block2", "block3"]
PLOTS = [tradeoff_plot, forgetting_curves_plot, cka_heatmap, training_curves_plot]
NEW_SECTIONS = ["strategies", "tradeoff", "forgetting", "cka-heatmap", "training-curves"]

# name: (test accuracy, FLOPs, final source accuracy, CKA per block)
SPEC = {
    "feature_extraction": (0.80, 1e9, 0.95, [1.0, 1.0, 1.0]),
    "partial": (0.86, 1e10, 0.90, [1.0, 0.95, 0.70]),
    "full_low_lr": (0.90, 5e10, 0.70, [0.90, 0.60, 0.35]),
    "discriminative": (0.89, 5e10, 0.85, [0.97, 0.85, 0.55]),
    "gradual_unfreeze": (0.88, None, 0.88, None),  # no FLOPs, no forgetting block
    "l2_sp": (0.87, 6e10, 0.92, [0.99, 0.90, 0.80]),
}


def _curves(n_epochs, final_source, overfit_at=None, diverge_at=None):
    rows = []
    for epoch in range(1, n_epochs + 1):
        train = 2.0 / epoch
        val = 2.2 / epoch if overfit_at is None or epoch < overfit_at else 0.5 + 0.3 * epoch
        if diverge_at is not None and epoch >= diverge_at:
            train, val = 1e4, None  # the loss blew up
        source = 0.95 - (0.95 - final_source) * epoch / n_epochs
        rows.append(
            {
                "epoch": epoch,
                "step": 10 * epoch,
                "train_loss": train,
                "train_accuracy": 0.5,
                "val_loss": val,
                "val_accuracy": 0.8,
                "source_accuracy": source,
                "agreement": source + 0.04,
                "cka": {},
                "weight_drift": {},
                "lr_head": 0.01,
            }
        )
    return rows


def _strategies():
    out = []
    for name, (test, flops, source, cka) in SPEC.items():
        entry = {
            "name": name,
            "status": "ok",
            "message": None,
            "diverged": None,
            "overfitting": {"epoch": 4, "detail": "val loss rose 3 epochs"}
            if name == "full_low_lr"
            else None,
            "config": {
                "lr": {"head": 0.01, "block3": 0.001},
                "stages": [],
                "frozen": ["block1"],
                "trainable": ["block2", "block3"],
                "epochs": 6,
                "batch_size": 32,
                "optimizer": "sgd",
                "weight_decay": 1e-4,
                "schedule": "cosine",
                "bn": "frozen",
                "init": "pretrained",
                "l2_sp_alpha": 0.01 if name == "l2_sp" else None,
                "prefix_cache": False,
                "seed": 0,
            },
            "target": {
                "val_accuracy": test + 0.01,
                "test_accuracy": test,
                "best_epoch": 3 if name == "full_low_lr" else 6,
                "val_loss": 0.4,
            },
            "cost": {
                "wall_s": 3.0,
                "flops": flops,
                "flops_per_step": None,
                "steps": 60,
                "trainable_params": 1234,
                "peak_mem_bytes": 5e7,
                "peak_mem_kind": "cpu",
            },
            "curves": _curves(6, source, overfit_at=4 if name == "full_low_lr" else None),
        }
        if cka is not None:
            entry["forgetting"] = {
                "source_accuracy": source,
                "source_accuracy_before": 0.95,
                "source_accuracy_drop": 0.95 - source,
                "agreement": source + 0.04,
                # deliberately not in forward order: the plot must follow results["layers"]
                "cka": dict(reversed(list(zip(BLOCKS, cka)))),
                "weight_drift": dict(zip(BLOCKS, [0.1, 0.2, 0.3])),
            }
        out.append(entry)
    out.append({"name": "lp_ft", "status": "failed", "message": EVIL})
    out.append(
        {
            "name": "scratch",
            "status": "diverged",
            "message": "loss became inf",
            "diverged": {"step": 35, "epoch": 4, "lr": 0.5, "loss": None},
            "target": {"val_accuracy": 0.3, "test_accuracy": 0.25, "best_epoch": 2},
            "forgetting": {"agreement": 0.1, "cka": dict(zip(BLOCKS, [0.1, 0.05, 0.02]))},
            "cost": {"flops": 2e10, "wall_s": None},
            "curves": _curves(4, 0.1, diverge_at=4),
        }
    )
    return out


def _results():
    strategies = _strategies()
    return {
        "schema": SCHEMA_VERSION,
        "kind": "compare",
        "model": {"name": "demo", "head": "head", "num_parameters": 1000, "notes": []},
        "target": {"name": "t", "classes": ["a", "b"], "n_train": 40},
        "layers": [{"name": b, "dim": 8, "probe": {"target": {"accuracy": 0.7}}} for b in BLOCKS],
        "recommendation": {"strategy": "partial", "unfreeze": ["block3"], "lr": {"head": 0.01}},
        "strategies": strategies,
        "comparison_recommendation": select_strategy(
            strategies, max_forgetting=0.2, assessment={"strategy": "partial"}
        ).to_dict(),
        "compare_config": {"strategies": list(SPEC), "max_forgetting": 0.2, "train": {"epochs": 6}},
        "warnings": [],
        "environment": {"seed": 0},
    }


def _png(out):
    assert out is not None
    png, takeaway = out
    raw = base64.b64decode(png, validate=True)
    assert raw.startswith(PNG) and len(raw) > 2000
    assert isinstance(takeaway, str) and takeaway.endswith(".")
    return takeaway


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. a layout that could not be applied
def test_every_plot_is_a_png_with_a_takeaway():
    for plot in PLOTS:
        _png(plot(_results()))


def test_pareto_front_matches_brute_force_dominance():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = [(str(i), float(c), float(a)) for i, (c, a) in enumerate(rng.random((9, 2)).round(1))]
        # a point is on the front when no other is at least as cheap and as accurate, and better in one
        expected = {
            p[0]
            for p in pts
            if not any(q[1] <= p[1] and q[2] >= p[2] and (q[1], q[2]) != (p[1], p[2]) for q in pts)
        }
        front = _pareto(pts)
        # one point per non-dominated (cost, accuracy) pair: an exact duplicate is drawn once
        assert {(p[1], p[2]) for p in front} == {(c, a) for n, c, a in pts if n in expected}
        assert len(front) == len({(p[1], p[2]) for p in front})
        assert all(a[1] < b[1] and a[2] < b[2] for a, b in itertools.pairwise(front))


def test_tradeoff_takeaway_names_the_front_and_what_is_missing():
    takeaway = _png(tradeoff_plot(_results()))
    # front by hand: feature_extraction (1e9, 0.80) -> partial (1e10, 0.86) -> full_low_lr (5e10, 0.90)
    assert (
        "from feature extraction (0.800 at 1e+09 FLOPs) to full fine-tuning, low LR (0.900, 50x"
        in takeaway
    )
    assert "+0.100" in takeaway
    assert "2 other strategies are dominated" in takeaway  # discriminative, l2_sp
    assert "from scratch diverged" in takeaway
    assert "not shown: gradual unfreezing (no cost), LP-FT (failed)" in takeaway


def test_tradeoff_falls_back_to_validation_accuracy_and_wall_time():
    res = {"strategies": [
        {"name": "a", "status": "ok", "target": {"val_accuracy": 0.7}, "cost": {"wall_s": 2.0}},
        {"name": "b", "status": "ok", "target": {"val_accuracy": 0.9}, "cost": {"wall_s": 1.0}},
    ]}  # fmt: skip
    takeaway = _png(tradeoff_plot(res))
    assert takeaway.startswith("b is both the cheapest and the most accurate (0.900 at 1 s)")
    assert "1 other strategy is dominated" in takeaway


def test_forgetting_uses_source_accuracy_when_measured_else_agreement():
    takeaway = _png(forgetting_curves_plot(_results()))
    # final source accuracy per non-scratch run, by hand: lowest full_low_lr 0.70, highest fe 0.95
    assert "source accuracy ranges from 0.700 under full fine-tuning, low LR" in takeaway
    assert "0.950 under feature extraction" in takeaway and "0.950 for the pretrained" in takeaway
    res = _results()
    for s in res["strategies"]:
        for row in s.get("curves", []):
            row["source_accuracy"] = None
    takeaway = _png(forgetting_curves_plot(res))
    assert (
        "agreement with the pretrained model ranges from 0.740 under full fine-tuning" in takeaway
    )


def test_cka_heatmap_takeaway_matches_an_independent_minimum():
    res = _results()
    takeaway = _png(cka_heatmap(res))
    rows = {
        s["name"]: s["forgetting"]["cka"]
        for s in res["strategies"]
        if s.get("forgetting") and s["forgetting"].get("cka") and s["name"] != "scratch"
    }
    name, layer = min(((n, b) for n in rows for b in rows[n]), key=lambda nb: rows[nb[0]][nb[1]])
    assert takeaway.startswith(
        f"Representations moved most under {strategy_label(name)} at {layer}"
    )
    means = {n: np.mean(list(v.values())) for n, v in rows.items()}
    top = max(means, key=means.get)
    assert f"least under {strategy_label(top)} (mean CKA {means[top]:.2f})" in takeaway
    # feature_extraction's CKA is 1 everywhere: it has no layer of largest change
    assert "largest change is at block3 in 4 of 5 strategies" in takeaway


def test_training_curves_mark_overfitting_divergence_and_best_epoch():
    takeaway = _png(training_curves_plot(_results()))
    assert "full fine-tuning, low LR from epoch 4" in takeaway
    assert "from scratch diverged at epoch 4 (LR 0.5)" in takeaway
    assert "still improving at the last epoch" in takeaway and "partial fine-tuning" in takeaway


@pytest.mark.parametrize(
    "results",
    [
        {},
        {"strategies": []},
        {"strategies": [{"name": "lp_ft", "status": "failed", "message": "x"}]},
        {"strategies": ["garbage", None, {"status": "ok", "target": None, "curves": None}]},
        {"strategies": {"not": "a list"}, "layers": 3},
        {"strategies": [{"name": "a", "status": "ok", "curves": 5, "forgetting": {"cka": []}}]},
    ],
)
def test_no_data_gives_none(results):
    assert all(plot(results) is None for plot in PLOTS)


def test_hand_edited_values_do_not_crash_the_plots():
    res = _results()
    s = res["strategies"][1]
    s["target"]["test_accuracy"] = "high"
    s["cost"]["flops"] = -5
    s["curves"][2] = {"epoch": None, "train_loss": "nan"}
    s["forgetting"]["cka"]["block2"] = None
    res["strategies"].append({"name": "partial", "status": "ok"})  # repeated name, no data
    for plot in PLOTS:
        _png(plot(res))


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.tags = set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.ids.update(v for k, v in attrs if k == "id")


def test_compare_report_has_every_new_section_and_escapes():
    res = _results()
    html = render_html(res)
    parser = _Collector()
    parser.feed(html)
    assert set(NEW_SECTIONS) <= parser.ids and "summary" in parser.ids
    assert parser.tags.count("img") >= 4
    assert "script" not in parser.tags and EVIL not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html
    assert "could not be drawn" not in html
    assert not re.search(r"https?://", html)
    # the comparison follows the summary card, before the data overview
    assert html.index('id="summary"') < html.index('id="strategies"') < html.index('id="data"')
    best = res["comparison_recommendation"]["strategy"]
    assert (
        f'Measured best strategy: <span class="strategy">{strategy_label(best)}</span> '
        f"(<code>{best}</code>)" in html
    )
    assert "&lt;script&gt;x&lt;/script&gt;</li>" in html  # the failed run in "Not eligible"
    assert "diverged" in html and "epoch 4, step 35, LR 0.5, loss non-finite" in html


def test_compare_report_renders_partial_files():
    res = _results()
    res["strategies"] = [{"name": "lp_ft", "status": "failed", "message": EVIL}]
    del res["comparison_recommendation"], res["compare_config"], res["layers"]
    html = render_html(res)
    assert "No measured recommendation" in html and EVIL not in html
    assert all(f'id="{s}"' in html for s in NEW_SECTIONS)
    assert "could not be drawn" not in html
    res["comparison_recommendation"] = select_strategy(res["strategies"]).to_dict()
    html = render_html(res)
    assert "No strategy qualifies" in html and "&lt;script&gt;" in html and EVIL not in html
    # hand-edited nonsense still renders, without a broken plot
    res.update(strategies={"x": 1}, comparison_recommendation="garbage", compare_config=[1])
    html = render_html(res)
    assert 'id="strategies"' in html and "could not be drawn" not in html


def test_assess_report_has_no_comparison_sections():
    res = copy.deepcopy(_results())
    res["kind"] = "assess"
    del res["strategies"]
    html = render_html(res)
    assert not any(f'id="{s}"' in html for s in NEW_SECTIONS)


def test_forgetting_takeaway_says_when_nothing_was_forgotten():
    res = _results()
    for s in res["strategies"]:
        for row in s.get("curves", []):
            if row.get("source_accuracy") is not None:
                row["source_accuracy"] = max(row["source_accuracy"], 0.95)  # never below before
    takeaway = _png(forgetting_curves_plot(res))
    assert takeaway.startswith("No strategy lowered source accuracy by the last epoch")
    assert "most forgetting" not in takeaway


def test_every_strategy_has_one_display_label():
    from diagnose.core.names import STRATEGY_NAMES

    assert set(STRATEGY_LABELS) == set(STRATEGY_NAMES)
    assert strategy_label("lp_ft") == "LP-FT" and strategy_label("lp_ft", typed=True) == (
        "LP-FT (lp_ft)"
    )
    assert strategy_label("mine") == "mine" and strategy_label("mine", typed=True) == "mine"


def _captured(monkeypatch, module):
    """Run a plot of ``module`` keeping its matplotlib figure instead of encoding it."""
    figs = []
    monkeypatch.setattr(module, "encode_png", lambda fig, rect=None: figs.append(fig) or "png")
    return figs


def _run_with_curves(name, epochs, planned, *, stage_epochs=None, lp=False, source=0.9):
    curves = (
        [{"epoch": 0, "step": 5, "stage": "linear_probe", "source_accuracy": 0.95}] if lp else []
    )
    curves += [
        {"epoch": e, "step": 10 * e, "source_accuracy": source, "train_loss": 1.0 / e,
         "val_loss": 1.2 / e}
        for e in range(1, epochs + 1)
    ]  # fmt: skip
    stages = [{"epochs": stage_epochs or planned}]
    return {
        "name": name,
        "status": "ok",
        "config": {"epochs": planned, "stages": stages},
        "target": {"val_accuracy": 0.8, "best_epoch": epochs},
        "forgetting": {"source_accuracy_before": 0.95},
        "curves": curves,
    }


def test_forgetting_is_plotted_against_the_fraction_of_training_done(monkeypatch):
    figs = _captured(monkeypatch, _plots_forgetting)
    res = {
        "strategies": [
            # 50 cheap head epochs against 2 of fine-tuning: both must end at x = 1
            _run_with_curves("feature_extraction", 50, 2, stage_epochs=50, source=0.95),
            _run_with_curves("full_low_lr", 2, 2, source=0.6),
            _run_with_curves("lp_ft", 2, 2, lp=True, source=0.8),
            _run_with_curves("partial", 1, 4, source=0.9),  # stopped early: ends at 1/4
            _run_with_curves("scratch", 2, 2, source=0.1),
        ]
    }
    _, takeaway = forgetting_curves_plot(res)
    (ax,) = figs[0].axes
    assert "fraction" in ax.get_xlabel() and "(0 to 1)" in ax.get_xlabel()
    lines = {line.get_label(): line for line in ax.get_lines()}
    # each pretrained strategy starts at the pretrained model's 0.95 at x = 0
    fe = list(lines["feature extraction"].get_xdata())
    assert fe == pytest.approx([0.0] + [e / 50 for e in range(1, 51)])
    full = lines["full fine-tuning, low LR"]
    assert list(full.get_xdata()) == pytest.approx([0.0, 0.5, 1.0])
    assert list(full.get_ydata()) == pytest.approx([0.95, 0.6, 0.6])
    assert list(lines["LP-FT"].get_xdata()) == pytest.approx([0.0, 0.5, 1.0])  # probe at 0
    assert list(lines["partial fine-tuning"].get_xdata()) == pytest.approx([0.0, 0.25])
    assert ax.get_xlim()[1] <= 1.05  # the 50 epochs no longer stretch the axis
    # scratch has nothing to forget: a dashed baseline, kept out of the forgetting extremes
    scratch = lines["from scratch (baseline, not forgetting)"]
    assert scratch.get_linestyle() == "--"
    assert list(scratch.get_xdata()) == pytest.approx([0.5, 1.0])  # no invented start
    assert lines["full fine-tuning, low LR"].get_linestyle() == "-"
    assert (
        "0.600 under full fine-tuning, low LR" in takeaway and "under from scratch" not in takeaway
    )
    assert "baseline, not forgetting" in takeaway


def test_training_curve_panels_each_have_their_own_epoch_axis(monkeypatch):
    from diagnose.report import plots_training as _plots_training

    figs = _captured(monkeypatch, _plots_training)
    res = {
        "strategies": [
            _run_with_curves("feature_extraction", 50, 2, stage_epochs=50),
            _run_with_curves("full_low_lr", 2, 2),
        ]
    }
    training_curves_plot(res)
    fe, full = figs[0].axes[:2]
    assert fe.get_xlim()[1] >= 50 and full.get_xlim()[1] < 5
    assert fe.get_xlabel() == full.get_xlabel() == "epoch"


def test_tradeoff_takeaway_says_a_cost_tie_instead_of_cheapest():
    res = {"strategies": [
        {"name": "full_low_lr", "status": "ok", "target": {"test_accuracy": 0.9},
         "cost": {"flops": 2.5e10, "wall_s": 14.9}},
        {"name": "scratch", "status": "ok", "target": {"test_accuracy": 0.1},
         "cost": {"flops": 2.5e10, "wall_s": 2.7}},
    ]}  # fmt: skip
    takeaway = _png(tradeoff_plot(res))
    assert "cheapest" not in takeaway
    assert takeaway.startswith(
        "Full fine-tuning, low LR is the most accurate (0.900 at 2.5e+10 FLOPs) and ties on "
        "cost with from scratch"
    )


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_one_seed_report_has_no_seed_table_and_says_seed_not_seeds():
    res = _results()
    res["compare_config"]["seeds"] = [0]
    html = render_html(res)
    assert "Each seed" not in html and 'id="per-seed"' not in html
    assert "<th>seed</th><td>0 (one training seed)</td>" in html
    assert "<th>seeds</th>" not in html
    # several seeds: the table is back, and the settings say how many
    res["compare_config"]["seeds"] = [0, 1]
    for s in res["strategies"]:
        s["per_seed"] = [
            {"seed": k, "status": "ok", "target": {"val_accuracy": 0.5}} for k in (0, 1)
        ]
    html = render_html(res)
    assert 'id="per-seed"' in html and "<th>seeds</th><td>2 seeds (0, 1)</td>" in html


def test_reports_use_display_names_with_the_typed_name_beside_them():
    res = _results()
    html = render_html(res)
    text = _text(html)
    for name, label in STRATEGY_LABELS.items():  # every strategy of the table, as typed
        if name in SPEC or name in ("lp_ft", "scratch"):
            assert f"<td>{label} (<code>{name}</code>)</td>" in html
    for garbled in ("lp ft", "full low lr", "feature extraction (feature", "gradual unfreeze "):
        assert garbled not in text
    assert "Recommended strategy" in text and "partial fine-tuning ( partial )" in text
    assert "assessment predicted partial fine-tuning" in text
    assert (
        "best first: "
        + " › ".join(strategy_label(n) for n in res["comparison_recommendation"]["ranking"])
        in text
    )
    # the selection rule says what the code does: wall time never splits equal FLOPs
    assert "cheapest (FLOPs, then wall time)" not in text
    assert "equal FLOPs go to the higher validation accuracy" in text


def test_config_table_shows_the_epochs_a_run_really_trained():
    res = _results()
    fe = next(s for s in res["strategies"] if s["name"] == "feature_extraction")
    fe["config"]["stages"] = [{"epochs": 50, "trainable": ["head"], "on_cached_features": True}]
    html = render_html(res)
    assert '<td class="n">50<br><span class="muted">head on cached features</span></td>' in html
