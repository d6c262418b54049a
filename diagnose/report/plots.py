"""Plots of the report, each a base64 PNG with a title, labelled axes and a takeaway.

Every function reads only the results dict and returns ``(png_base64, takeaway)``
or ``None`` when the data it needs is absent.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from diagnose.core import PROBE_ROLES, LayerResult  # noqa: E402

__all__ = [
    "class_balance_plot",
    "encode_png",
    "gap_plot",
    "lr_find_plot",
    "probe_plot",
    "short_name",
]

_PALETTE = {"target": "#1f77b4", "control": "#7f7f7f", "source": "#2ca02c"}


def encode_png(fig, rect: tuple[float, float, float, float] | None = None) -> str:
    """The figure as a base64 PNG (closed afterwards); ``rect`` is tight_layout's."""
    buf = io.BytesIO()
    fig.tight_layout(rect=rect)
    fig.savefig(buf, format="png", dpi=96)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def short_name(name: str) -> str:
    return name if len(name) <= 18 else "…" + name[-17:]


def _layers(results: dict) -> list[LayerResult]:
    return [LayerResult.from_dict(x) for x in results.get("layers") or [] if isinstance(x, dict)]


def probe_plot(results: dict):
    layers = _layers(results)
    names = [layer.name or "?" for layer in layers]
    series = {}
    for which in PROBE_ROLES:
        scores = [(layer.probe or {}).get(which) for layer in layers]
        acc = [None if p is None else p.accuracy for p in scores]
        ci = [None if p is None else p.ci for p in scores]
        if any(a is not None for a in acc):
            series[which] = (acc, ci)
    if not series:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    x = np.arange(len(names))
    for which, (acc, ci) in series.items():
        pts = [(i, a, c) for i, (a, c) in enumerate(zip(acc, ci)) if a is not None]
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        lo = [p[1] - (p[2][0] if p[2] else p[1]) for p in pts]
        hi = [(p[2][1] if p[2] else p[1]) - p[1] for p in pts]
        label = {
            "target": "target (pretrained)",
            "control": "target (random-init control)",
            "source": "source task (pretrained)",
        }[which]
        ax.errorbar(
            xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label, color=_PALETTE[which]
        )
    ax.set_xticks(x, [short_name(n) for n in names], rotation=20, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("linear-probe test accuracy (fraction)")
    ax.set_title("Linear-probe accuracy over depth (95% CI)")
    ax.legend(loc="lower right", fontsize=8)
    takeaway = "No target probe was measured."
    if "target" in series:
        acc = series["target"][0]
        valid = [(a, i) for i, a in enumerate(acc) if a is not None]
        best, bi = max(valid)
        last = acc[-1]
        takeaway = f"The target probe peaks at {names[bi]} ({best:.3f})"
        if last is not None and bi != len(acc) - 1:
            takeaway += f" and ends at {last:.3f} on the last layer"
        if "control" in series:
            ctrl = [a for a in series["control"][0] if a is not None]
            if ctrl:
                takeaway += f"; the random-init control reaches at most {max(ctrl):.3f}, so pretraining adds {best - max(ctrl):+.3f}"
        takeaway += "."
    return encode_png(fig), takeaway


def gap_plot(results: dict):
    layers = _layers(results)
    names = [layer.name or "?" for layer in layers]
    pad = [layer.gap_value("pad") for layer in layers]
    mmd = [layer.gap_value("mmd2") for layer in layers]
    if not any(p is not None for p in pad):
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(names))
    ax.plot(
        [i for i, p in enumerate(pad) if p is not None],
        [p for p in pad if p is not None],
        marker="o",
        color="#d62728",
        label="proxy A-distance (left)",
    )
    ax.set_ylim(0, 2.05)
    ax.set_ylabel("proxy A-distance (0 to 2)")
    ax2 = ax.twinx()
    ax2.plot(
        [i for i, m in enumerate(mmd) if m is not None],
        [m for m in mmd if m is not None],
        marker="s",
        linestyle="--",
        color="#9467bd",
        label="MMD² (right)",
    )
    ax2.set_ylabel("MMD² (RBF kernel, unitless)")
    ax2.grid(False)
    ax.set_xticks(x, [short_name(n) for n in names], rotation=20, ha="right")
    ax.set_xlabel("layer (forward order)")
    ax.set_title("Source-target domain gap over depth")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    valid = [(p, i) for i, p in enumerate(pad) if p is not None]
    top, ti = max(valid)
    first = pad[0]
    if first is not None and first >= 1.0:
        kind = "already large at the first layer: an input-level shift"
    elif first is not None and top - first >= 0.5:
        kind = "small at the input and growing with depth: a feature-level shift"
    else:
        kind = "small throughout: the inputs look alike to the model"
    takeaway = (
        f"The gap is {kind} (PAD {first:.2f} at {names[0]}, largest {top:.2f} at {names[ti]})."
    )
    return encode_png(fig), takeaway


def lr_find_plot(results: dict):
    lr = results.get("lr_find") or {}
    lrs, losses = lr.get("lrs") or [], lr.get("losses") or []
    if len(lrs) < 2 or len(lrs) != len(losses):
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    pts = [(a, b) for a, b in zip(lrs, losses) if b is not None]
    ax.plot(
        [p[0] for p in pts], [p[1] for p in pts], color="#1f77b4", label="smoothed training loss"
    )
    ax.set_xscale("log")
    sug = lr.get("suggested_lr")
    if sug:
        ax.axvline(sug, color="#d62728", linestyle="--", label=f"suggested LR {sug:.2g}")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title("LR range test of a new head on the target")
    ax.legend(fontsize=8)
    if sug:
        takeaway = (
            f"The loss falls fastest at LR {sug:.2g}, well before it diverges "
            f"({lr.get('stop_reason', '')}); that is the suggested head LR."
        )
    else:
        takeaway = (
            "The loss never fell steadily, so no LR is suggested; inspect the data and labels."
        )
    return encode_png(fig), takeaway


def class_balance_plot(results: dict):
    rows = []
    for key in ("source", "target"):
        info = results.get(key) or {}
        counts = info.get("class_counts") or {}
        if isinstance(counts, list):  # indexed by label
            names = info.get("classes") or []
            counts = {(names[i] if i < len(names) else str(i)): n for i, n in enumerate(counts)}
        rows.extend((key, str(c), int(n)) for c, n in counts.items() if n is not None)
    if not rows:
        return None
    sns.set_theme(style="whitegrid")
    classes = list(dict.fromkeys(r[1] for r in rows))
    fig, ax = plt.subplots(figsize=(max(5.0, min(12.0, 0.5 * len(classes) + 3)), 3.2))
    width = 0.4
    x = np.arange(len(classes))
    for k, key in enumerate(("source", "target")):
        vals = {r[1]: r[2] for r in rows if r[0] == key}
        if vals:
            ax.bar(x + (k - 0.5) * width, [vals.get(c, 0) for c in classes], width, label=key)
    ax.set_xticks(
        x, [short_name(c) for c in classes], rotation=30 if len(classes) > 6 else 0, ha="right"
    )
    ax.set_xlabel("class")
    ax.set_ylabel("images (count)")
    ax.set_title("Class balance per domain")
    ax.legend(fontsize=8)
    parts = []
    for key in ("source", "target"):
        vals = [r[2] for r in rows if r[0] == key and r[2] > 0]
        if vals:
            parts.append(f"{key} {max(vals) / min(vals):.1f}x")
    takeaway = (
        ("Largest over smallest class: " + ", ".join(parts) + ".") if parts else "No class counts."
    )
    return encode_png(fig), takeaway
