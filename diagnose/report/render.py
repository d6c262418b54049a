"""Render a results dict to one self-contained HTML file.

The report reads only the results dict (so ``diagnose report results.json``
re-renders any run), embeds its plots as PNG data URIs, makes no network
request and escapes every string through jinja2's autoescape: class names and
paths are user input.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from importlib import resources
from pathlib import Path

import jinja2

from diagnose.core import (
    Arg,
    UsageError,
    atomic_write_text,
    load_results,
    strategy_label,
    write_results,
)
from diagnose.report import plots as _plots
from diagnose.report import plots_audit as _plots_audit
from diagnose.report import plots_compare as _plots_compare
from diagnose.report import plots_forgetting as _plots_forgetting
from diagnose.report import plots_front as _plots_front
from diagnose.report import plots_race as _plots_race
from diagnose.report import plots_track
from diagnose.report import plots_training as _plots_training

__all__ = [
    "check_out_dir",
    "render_html",
    "render_report_file",
    "write_outputs",
]


def _template_env() -> jinja2.Environment:
    try:
        loader: jinja2.BaseLoader = jinja2.FileSystemLoader(
            str(resources.files("diagnose.templates"))
        )
    except ModuleNotFoundError:  # running from a checkout without installing
        loader = jinja2.FileSystemLoader(str(Path(__file__).resolve().parents[2] / "templates"))
    env = jinja2.Environment(
        loader=loader,
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    env.filters["strategy"] = _strategy
    return env


def _strategy(name) -> str:
    """The display name of a strategy (``{{ s.name | strategy }}``); "—" when missing."""
    if name is None or isinstance(name, jinja2.Undefined) or name == "":
        return "—"
    return strategy_label(name)


def _num(value, digits: int = 3) -> str:
    if value is None or isinstance(value, jinja2.Undefined):
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):  # a record such as environment.threads: "key value · ..."
        return " · ".join(f"{k} {_num(v, digits)}" for k, v in value.items())
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{max(digits - 1, 1)}e}"
        return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    if value is None or isinstance(value, jinja2.Undefined) or not isinstance(value, (int, float)):
        return "—"
    return f"{100 * value:.1f}%"


def _figure(fn, results: dict) -> dict | None:
    try:
        out = fn(results)
    except Exception as exc:  # a malformed section must not take the whole report down
        return {"png": None, "takeaway": f"This plot could not be drawn: {exc}"}
    if out is None:
        return None
    return {"png": out[0], "takeaway": out[1]}


def render_html(results: dict) -> str:
    """The report for ``results`` (kind "assess", "compare", "audit", "track" or "demo") as an HTML string."""
    env = _template_env()
    kind = results.get("kind")
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if kind == "demo":
        return env.get_template("demo.html.j2").render(r=results, generated=generated)
    if kind == "track":
        figures = {
            "forgetting": _figure(plots_track.track_forgetting_plot, results),
            "cka": _figure(plots_track.track_cka_plot, results),
            "drift": _figure(plots_track.track_drift_heatmap, results),
        }
        return env.get_template("track.html.j2").render(r=results, fig=figures, generated=generated)
    if kind == "audit":
        figures = {
            "cka": _figure(_plots_audit.audit_cka_plot, results),
            "per_class": _figure(_plots_audit.per_class_forgetting_plot, results),
        }
        return env.get_template("audit.html.j2").render(r=results, fig=figures, generated=generated)
    figures = {
        "probe": _figure(_plots.probe_plot, results),
        "gap": _figure(_plots.gap_plot, results),
        "lr_find": _figure(_plots.lr_find_plot, results),
        "balance": _figure(_plots.class_balance_plot, results),
        "race": _figure(_plots_race.race_plot, results),
        "race_front": _figure(_plots_front.race_front_plot, results),
    }
    if results.get("strategies"):  # kind "compare": the assessment plus the strategy runs
        figures.update(
            tradeoff=_figure(_plots_compare.tradeoff_plot, results),
            front=_figure(_plots_front.front_plot, results),
            forgetting=_figure(_plots_forgetting.forgetting_curves_plot, results),
            cka=_figure(_plots_forgetting.cka_heatmap, results),
            training_curves=_figure(_plots_training.training_curves_plot, results),
        )
    return env.get_template("report.html.j2").render(r=results, fig=figures, generated=generated)


def check_out_dir(out_dir: str | Path) -> Path:
    """Fail fast, before any measuring, when ``out_dir`` could not be written; creates nothing.

    Raises ``ValueError`` when it is a file, or when it (or the nearest
    existing folder above it) is not writable.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"output directory {out} is a file; pass ", Arg("out", "DIR"), ", a directory path."
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"output directory {out} cannot be created: {existing} is a file; pass ",
            Arg("out", "DIR"), ", a directory path.",
        )  # fmt: skip
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == out else f" (its parent {existing} is not writable)"
        raise UsageError(
            f"output directory {out} is not writable{where}; pass ", Arg("out", "DIR"),
            ", a folder you can write to.",
        )  # fmt: skip
    return out


def write_outputs(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` then ``report.html`` into ``out_dir`` (created if missing)."""
    out = check_out_dir(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create output directory {out}: {exc.strerror}.") from None
    try:
        results_path = write_results(results, out / "results.json")
    except PermissionError:
        raise UsageError(
            f"output directory {out} is not writable; pass ", Arg("out", "DIR"),
            ", a folder you can write to.",
        ) from None  # fmt: skip
    report_path = atomic_write_text(out / "report.html", render_html(load_results(results_path)))
    return results_path, report_path


def render_report_file(results_path: str | Path, out: str | Path | None = None) -> Path:
    """Re-render the report of a results file (``diagnose report``)."""
    results = load_results(results_path)
    target = Path(out) if out is not None else Path(results_path).with_name("report.html")
    if target.is_dir():
        target = target / "report.html"
    if not target.parent.exists():
        raise ValueError(f"output folder {target.parent} does not exist.")
    return atomic_write_text(target, render_html(results))
