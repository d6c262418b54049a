"""Training-curve small multiples of the comparison report (one panel per strategy)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from diagnose.core import finite, join_labels
from diagnose.report.plots import encode_png
from diagnose.report.plots_entries import (
    BLUE,
    GREEN,
    ORANGE,
    PURPLE,
    RED,
    curve_values,
    labelled_entries,
    xy_lists,
)

__all__ = [
    "training_curves_plot",
]


def _diverged_epoch(entry: dict) -> float | None:
    if entry.status != "diverged":
        return None
    epoch = entry.diverged.epoch if entry.diverged else None
    if epoch is None:  # fall back to the last evaluation before the loss went non-finite
        epochs = [p[0] for p in curve_values(entry, "train_loss") + curve_values(entry, "val_loss")]
        epoch = max(epochs) if epochs else None
    return epoch


def training_curves_plot(results: dict) -> tuple[str, str] | None:
    """Train and validation loss per strategy (small multiples, a shared loss axis).

    Each panel has its own epoch axis: feature extraction's 50 head epochs would
    squeeze a 3-epoch fine-tuning into a corner of a shared one.
    """
    panels = []
    for label, e in labelled_entries(results):
        train, val = curve_values(e, "train_loss"), curve_values(e, "val_loss")
        if train or val:
            panels.append((label, e, train, val))
    if not panels:
        return None
    # The shared y range shows every healthy run in full; a divergence spike would flatten
    # the rest, so a diverged run's points above it sit as triangles on the top edge.
    healthy = [p[1] for _, e, t, v in panels if e.status != "diverged" for p in t + v]
    firsts = [min(t + v)[1] for _, _, t, v in panels]
    top = max(1.05 * max(healthy) if healthy else 2.0 * float(np.median(firsts)), 1e-6)
    shown = [p[1] for _, _, t, v in panels for p in t + v if 0 < p[1] <= top]
    log = bool(shown) and max(shown) / min(shown) > 50

    n = len(panels)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(2.9 * ncols + 0.8, 2.3 * nrows + 1.2),
        sharex=False,
        sharey=True,
        squeeze=False,
    )
    notes: dict[str, list[str]] = {"diverged": [], "overfit": [], "improving": []}
    for ax, (label, e, train, val) in zip(axes.flat, panels):
        _draw_panel(ax, label, e, train, val, top, notes)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
        else:  # every panel has its own epoch range, so each carries its axis label
            ax.set_xlabel("epoch", fontsize=8)
    if log:
        axes[0, 0].set_yscale("log")
        axes[0, 0].set_ylim(min(shown) / 1.5, top * 1.5)
    else:
        axes[0, 0].set_ylim(0, top)
    fig.supylabel("cross-entropy loss (nats" + (", log scale)" if log else ")"), fontsize=10)
    fig.suptitle("Training and validation loss per strategy", fontsize=11)
    handles = [
        Line2D([], [], color=BLUE, marker=".", label="train loss"),
        Line2D([], [], color=ORANGE, linestyle="--", marker=".", label="validation loss"),
        Line2D([], [], color=GREEN, marker="*", ls="", ms=10, label="best validation epoch"),
    ]
    if notes["overfit"]:
        handles.append(Line2D([], [], color=PURPLE, linestyle=":", label="overfitting onset"))
    if notes["diverged"]:
        handles.append(Line2D([], [], color=RED, marker="^", label="divergence (off scale)"))
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    rect = (0, 0.07 if nrows == 1 else 0.04, 1, 1)  # room for the figure legend below
    return encode_png(fig, rect), _curves_takeaway(notes, n)


def _draw_panel(ax, label: str, e, train, val, top: float, notes: dict) -> None:
    """One strategy's losses, its divergence, overfitting onset and best epoch; what they
    show is added to ``notes`` for the takeaway."""
    ax.plot(*xy_lists(train), color=BLUE, marker=".")
    ax.plot(*xy_lists(val), color=ORANGE, linestyle="--", marker=".")
    high = [p[0] for p in train + val if p[1] > top]
    if high:  # an empty unclipped line would still stretch the layout to the origin
        ax.plot(high, [top] * len(high), "^", color=RED, clip_on=False)
    div = _diverged_epoch(e)
    if div is not None:
        ax.axvline(div, color=RED, linewidth=1.5)
        lr = e.diverged.lr if e.diverged else None
        notes["diverged"].append(
            f"{label} diverged at epoch {div:g}" + (f" (LR {lr:.2g})" if lr is not None else "")
        )
    over = finite((e.overfitting or {}).get("epoch"))
    if over is not None:
        ax.axvline(over, color=PURPLE, linestyle=":", linewidth=1.5)
        notes["overfit"].append(f"{label} from epoch {over:g}")
    best = e.target.best_epoch
    at = [p for p in val if p[0] == best]
    if at:
        ax.plot(*xy_lists(at[:1]), marker="*", markersize=12, color=GREEN, zorder=4)
    elif best is not None:
        ax.axvline(best, color=GREEN, linestyle="-.", linewidth=1.2)
    epochs = [p[0] for p in train + val]
    if best is not None and e.status == "ok" and epochs and best >= max(epochs):
        notes["improving"].append(label)
    ax.set_title(label + ("" if e.status in (None, "ok") else f" ({e.status})"), fontsize=9)
    ax.tick_params(labelsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _curves_takeaway(notes: dict, n: int) -> str:
    """Overfitting, divergence and runs still improving, or that none of them happened."""
    parts = []
    if notes["overfit"]:
        parts.append(
            "overfitting (validation loss rising while training loss falls): "
            + join_labels(notes["overfit"])
        )
    if notes["diverged"]:
        parts.append("; ".join(notes["diverged"]))
    improving = notes["improving"]
    if improving:
        parts.append(
            f"{join_labels(improving)} {'was' if len(improving) == 1 else 'were'} still improving at the "
            "last epoch, so more epochs may help"
        )
    if not parts:
        parts.append(f"None of the {n} strategies diverged or overfit")
    takeaway = "; ".join(parts) + "."
    return takeaway[0].upper() + takeaway[1:]
