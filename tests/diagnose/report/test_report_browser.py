"""The HTML report in a real browser: hostile class names stay text, no script runs, no network.

Headless Chromium loads the report from a file:// URL. Three independent
observations are checked:

* the DOM Chromium built (``--dump-dom``): no ``<script>`` element, no ``on*``
  event-handler attribute, every ``src``/``href`` a ``data:`` URI, and the
  hostile strings present verbatim as text;
* the console (``--enable-logging=stderr``): no message at all, so no script
  error and no Content-Security-Policy violation (a blocked load logs one);
* the network log (``--log-net-log``): no request started by the page (the
  browser's own background requests have no page initiator and are ignored).

A control page with a script error and a remote image shows the console and
network checks do see such things. The tests skip, saying why, when Chromium is
missing and cannot be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from diagnose.report.render import render_html

IMG = "<img src=x onerror=alert(1)>"
# '/' cannot be part of a folder name, so the class-name script uses a backslash;
# the results-dict test below uses the real closing tag.
SCRIPT_DIR = "<script>alert(1)<\\script>"
SCRIPT = "</script><script>alert('x')</script>"
QUOTES = "a&b \"q\" 'x' <!-- -->"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--log-level=0",
]


def _find_or_install_chromium() -> tuple[str | None, str]:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found, ""
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium", ""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
        return None, "chromium is not installed (and not root with apt-get to install it)"
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"],
            check=True,
            capture_output=True,
            timeout=120,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"chromium is not installed and `apt-get install chromium` failed: {exc}"
    found = shutil.which("chromium")
    return found, "" if found else "apt-get installed chromium but it is not on PATH"


@pytest.fixture(scope="module")
def chromium() -> str:
    path, why = _find_or_install_chromium()
    if path is None:
        pytest.skip(f"browser test skipped: {why}")
    return path


class _Dom(HTMLParser):
    """Tags, attributes and text of a serialized DOM."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend((tag, k, v or "") for k, v in attrs)

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)


def _load(chromium: str, page: Path, tmp: Path) -> tuple[_Dom, list[str], list[str]]:
    """Open ``page`` in headless Chromium: (its DOM, console lines, page-initiated request URLs)."""
    netlog = tmp / f"{page.stem}.netlog.json"
    proc = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp / 'profile'}",
            f"--log-net-log={netlog}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    log = json.loads(netlog.read_text(encoding="utf-8"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requests = [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start
        and "url" in e.get("params", {})
        # Chromium's own update/time checks run with no page origin.
        and e["params"].get("initiator") != "not an origin"
    ]
    return dom, console, requests


def _assert_inert(dom: _Dom, console: list[str], requests: list[str], evil: list[str]) -> None:
    assert "body" in dom.tags and len(dom.tags) > 50, "the report did not render"
    assert console == [], console
    assert requests == [], requests
    assert "script" not in dom.tags
    handlers = [(t, k) for t, k, _ in dom.attrs if k.startswith("on")]
    assert handlers == []
    urls = [v for _, k, v in dom.attrs if k in ("src", "href", "srcset", "action", "poster")]
    assert urls and all(u.startswith("data:") for u in urls), [u[:60] for u in urls]
    text = "".join(dom.text)
    for s in evil:
        assert s in text, f"{s!r} is not shown as text"


def test_browser_checks_see_script_errors_and_requests(chromium, tmp_path) -> None:
    page = tmp_path / "control.html"
    page.write_text(
        '<!doctype html><html><body><p>x</p><img src="http://127.0.0.1:9/x.png">'
        "<script>undefined_function()</script></body></html>",
        encoding="utf-8",
    )
    dom, console, requests = _load(chromium, page, tmp_path)
    assert "script" in dom.tags
    assert any("undefined_function is not defined" in line for line in console)
    assert requests == ["http://127.0.0.1:9/x.png"]


def _image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate([IMG, SCRIPT_DIR, QUOTES]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.random((12, 12, 3)) * 255 * (k + 1) / 3
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_report_with_hostile_names_is_inert_in_chromium(chromium, tmp_path, demo_cache_dir) -> None:
    import diagnose

    res = diagnose.assess(
        "demo",
        "demo:digits",
        str(_image_folder(tmp_path / "data")),
        max_samples=18,
        n_permutations=10,
        # No trial race here (on 18 images its 28 candidates train ~2,400 one-step epochs,
        # 25 of this test's 35 s); the re-render below adds a race table with hostile text.
        trial_budget=0,
        device="cpu",
        out=tmp_path / "out",
        progress=False,
    )
    assert set(res.to_dict()["target"]["classes"]) == {IMG, SCRIPT_DIR, QUOTES}
    dom, console, requests = _load(chromium, tmp_path / "out" / "report.html", tmp_path)
    _assert_inert(dom, console, requests, [IMG, SCRIPT_DIR, QUOTES])

    # The same results with '/' in every kind of user string: closing tags, URLs.
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    results["target"]["name"] = SCRIPT
    results["target"]["description"] = "<a href='https://example.com/x'>link</a>"
    results["warnings"] = [f"warning {SCRIPT}", "<iframe src='//example.com'></iframe>"]
    results["model"]["name"] = "<link rel=stylesheet href=https://example.com/s.css>"
    # The race table's free text: a failed candidate's reason quotes its error message.
    rung = {"rung": 0, "epochs": 5, "val_accuracy": 0.5, "flops": 1e9, "wall_s": 0.1}
    failed = {"key": "a", "strategy": "partial", "depth": 1, "head_lr": 0.01, "lr_edge": False,
              "placed_by": "strategy", "rungs": [rung], "flops": 1e9, "wall_s": 0.1,
              "status": "failed", "reason": f"RuntimeError: {SCRIPT}"}  # fmt: skip
    pick = {**failed, "key": "b", "strategy": "feature_extraction", "status": "ok", "reason": ""}
    results["recommendation"]["measured"] = True
    results["recommendation"]["trials"] = {
        "candidates": [failed, pick], "rung_epochs": [5], "eta": 3, "flops_spent": 2e9,
        "full_flops_estimate": 1e10, "budget": 0.2, "wall_s": 0.2, "pick": "b", "winner": "b",
        "chosen_by": "the winner", "within_noise": False, "tie_tolerance": 0.005,
        "leaders": ["b"], "protocol": {"kind": "k-fold", "folds": 2, "repeats": 1, "n_held_out": 9},
    }  # fmt: skip
    page = tmp_path / "slash.html"
    page.write_text(render_html(results), encoding="utf-8")
    dom, console, requests = _load(chromium, page, tmp_path)
    assert not {"iframe", "link"} & set(dom.tags)
    _assert_inert(
        dom,
        console,
        requests,
        [SCRIPT, IMG, "<a href='https://example.com/x'>link</a>", "<iframe src='//example.com'>"],
    )
    assert f"RuntimeError: {SCRIPT}" in "".join(dom.text)  # the race table was rendered
