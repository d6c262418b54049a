"""Plots of the audit report, each a base64 PNG with a title, labelled axes and a takeaway.

Every function reads only the results dict (kind "audit") and returns
``(png_base64, takeaway)`` or ``None`` when the data it needs is absent.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from diagnose.core import Audit, as_number
from diagnose.report.plots import encode_png, short_name

__all__ = [
    "audit_cka_plot",
    "per_class_forgetting_plot",
]

_COLORS = {"source": "#2ca02c", "target": "#1f77b4"}


def audit_cka_plot(results: dict):
    """Linear CKA (pretrained vs fine-tuned) per block, on source and target images."""
    record = Audit.from_dict(results)
    layers = record.layers or ()
    names = [str(layer.name or "?") for layer in layers]
    series = {}
    for which in ("source", "target"):
        vals = [getattr(layer, f"cka_{which}") for layer in layers]
        if any(v is not None for v in vals):
            series[which] = vals
    if not series:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(names))
    for which, vals in series.items():
        pts = [(i, v) for i, v in enumerate(vals) if v is not None]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="o",
            color=_COLORS[which],
            label=f"{which} images",
        )
    thr = record.threshold("cka_unchanged")
    if thr is not None:
        ax.axhline(thr, color="#7f7f7f", ls="--", lw=1, label=f"unchanged threshold ({thr})")
    ax.set_xticks(x)
    ax.set_xticklabels([short_name(n) for n in names], rotation=20, ha="right")
    low = min(v for vals in series.values() for v in vals if v is not None)
    ax.set_ylim(0.0 if low < 0.5 else low - 0.05, 1.02)
    ax.set_xlabel("block (forward order)")
    ax.set_ylabel("linear CKA (0 to 1)")
    ax.set_title("Representation change per block: CKA of pretrained vs fine-tuned")
    ax.legend(loc="lower left", fontsize=8)
    src = series.get("source") or next(iter(series.values()))
    pts = [(v, n) for v, n in zip(src, names) if v is not None]
    worst_v, worst_n = min(pts)
    takeaway = (
        f"The {'source' if 'source' in series else 'target'} representation changed most at "
        f"{worst_n} (CKA {worst_v:.3f}; 1.0 = unchanged up to rotation and scale)."
    )
    return encode_png(fig), takeaway


def per_class_forgetting_plot(results: dict):
    """Source accuracy drop per class (percentage points) through the original head."""
    rows = Audit.from_dict(results).source_accuracy.per_class or ()
    rows = [r for r in rows if isinstance(r, dict) and as_number(r.get("drop")) is not None]
    if not rows:
        return None
    names = [short_name(str(r.get("class"))) for r in rows]
    drops = [100.0 * float(r["drop"]) for r in rows]
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    colors = ["#b3261e" if d > 0 else "#1e7a3c" for d in drops]
    ax.bar(np.arange(len(rows)), drops, color=colors)
    ax.axhline(0.0, color="#1d2330", lw=0.8)
    ax.set_xticks(np.arange(len(rows)))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_xlabel("source class")
    ax.set_ylabel("accuracy drop (percentage points)")
    ax.set_title("Source accuracy lost per class (original head)")
    worst = int(np.argmax(drops))
    if drops[worst] > 0:
        takeaway = (
            f"Class {rows[worst].get('class')} lost the most: {drops[worst]:.1f} points "
            f"({rows[worst].get('n')} images); positive bars are forgetting."
        )
    else:
        takeaway = "No source class lost accuracy through the original head."
    return encode_png(fig), takeaway
