"""The demo pipeline end to end (two targets, one epoch, to stay fast)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from diagnose import STRATEGIES
from diagnose.workflows.demo import run_demo


def test_demo_writes_overview_scenarios_and_audit(tmp_path):
    out = tmp_path / "demo"
    # A small race budget keeps the test short; the demo itself races at the default.
    overview = run_demo(
        out,
        targets=("demo:digits-noise", "demo:digits-relabel"),
        epochs=1,
        progress=False,
        trial_budget=0.05,
    )
    assert [r["status"] for r in overview["scenarios"]] == ["ok", "ok"]
    for row in overview["scenarios"]:
        assert row["strategy"] in STRATEGIES and row["measured_best"] in STRATEGIES
        assert row["measured"] is True  # the race's pick, beside the comparison's best
        assert (out / row["report"]).exists()
        data = json.loads((out / row["report"]).with_name("results.json").read_text())
        assert data["kind"] == "compare" and len(data["strategies"]) == len(STRATEGIES)
    audit = overview["audit"]
    assert audit["status"] == "ok", audit
    audit_data = json.loads((out / audit["report"]).with_name("results.json").read_text())
    assert audit["verdict"] == audit_data["verdict"] and audit_data["kind"] == "audit"
    links = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            links.extend(v for k, v in attrs if k == "href")

    P().feed((out / "report.html").read_text())
    assert {r["report"] for r in overview["scenarios"]} | {audit["report"]} <= set(links)


def test_a_bad_trial_budget_is_refused_before_any_scenario_runs(tmp_path):
    import pytest

    with pytest.raises(
        ValueError,
        match=r"'trial_budget' parameter of demo must be a number in \[0, 1\] \(a fraction",
    ):
        run_demo(tmp_path / "demo", trial_budget=2.0, progress=False)
    assert not (tmp_path / "demo").exists()
