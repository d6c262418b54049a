"""Plots of the strategy comparison, each a base64 PNG with a title, labelled axes and a takeaway.

Like :mod:`diagnose.report.plots`, every function reads only the results dict (its
``strategies`` list) and returns ``(png_base64, takeaway)``, or ``None`` when the
data it needs is absent. Entries may be partial (a failed run has only a name,
status and message; any number may be None), so every field is read defensively.
One colour per strategy name is kept across plots. Example::

    png_b64, takeaway = tradeoff_plot(results)  # None when no run has accuracy and cost
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from diagnose.core import (  # noqa: E402
    STRATEGY_LABELS,
    finite,
    join_labels,
)
from diagnose.report.plots import encode_png, short_name  # noqa: E402
from diagnose.report.plots_entries import (
    RED,
    as_list,
    curve_values,
    labelled_entries,
    strategy_colour,
    xy_lists,
)

__all__ = [
    "cka_heatmap",
    "forgetting_curves_plot",
    "tradeoff_plot",
]


def _pareto(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Non-dominated ``(label, cost, accuracy)`` points, cheapest first (min cost, max accuracy)."""
    front, best = [], -math.inf
    for point in sorted(points, key=lambda p: (p[1], -p[2])):
        if point[2] > best:
            front.append(point)
            best = point[2]
    return front


def tradeoff_plot(results: dict) -> tuple[str, str] | None:
    """Test accuracy against training FLOPs per strategy, with the Pareto front.

    With several seeds per strategy each point is the mean, with a vertical
    error bar of one standard deviation across seeds.
    """
    entries = labelled_entries(results)
    ran = [(label, e) for label, e in entries if e.status != "failed"]
    y_key = "test_accuracy"
    if not any(getattr(e.target, y_key) is not None for _, e in ran):
        y_key = "val_accuracy"  # a partial file without test accuracy still gets a plot
    x_key = "flops"
    if not any(getattr(e.cost, x_key) is not None for _, e in ran):
        x_key = "wall_s"
    points, diverged, omitted = [], [], []
    for label, e in entries:
        if e.status not in ("ok", "diverged"):
            omitted.append(f"{label} ({e.status or 'no status'})")
            continue
        x, y = getattr(e.cost, x_key), getattr(e.target, y_key)
        if x is None or x <= 0 or y is None:
            omitted.append(f"{label} (no {'cost' if x is None or x <= 0 else 'accuracy'})")
            continue
        (points if e.status == "ok" else diverged).append((label, x, y, e))
    if not points and not diverged:
        return None
    x_unit, x_what = ("FLOPs", "training compute") if x_key == "flops" else ("s", "wall time")
    y_label = f"{'test' if y_key == 'test_accuracy' else 'validation'} accuracy (fraction)"

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    span = max(0.05, max(p[2] for p in points + diverged) - min(p[2] for p in points + diverged))
    placed: list[tuple[float, float]] = []
    for label, x, y, e in sorted(points + diverged, key=lambda p: -p[2]):
        bad = e.status != "ok"
        if bad:
            ax.scatter([x], [y], s=70, marker="X", color=RED, zorder=3)
        else:
            ax.scatter(
                [x], [y], s=55, color=strategy_colour(e), edgecolor="black", linewidth=0.5, zorder=3
            )
        # Labels of points close on both axes are stacked downwards instead of overprinting.
        near = sum(abs(math.log10(x / px)) < 0.3 and abs(y - py) < 0.08 * span for px, py in placed)
        placed.append((x, y))
        text = f"{label} (diverged)" if bad else label
        lead = {"arrowstyle": "-", "color": "grey", "linewidth": 0.6} if near else None
        offset = (24 if near else 8, 3 - 11 * near)  # stacked labels clear the cluster
        ax.annotate(
            text, (x, y), xytext=offset, textcoords="offset points", fontsize=8, arrowprops=lead
        )
        std = e.spread_std("target", y_key)
        if std is not None:
            color = RED if bad else strategy_colour(e)
            ax.errorbar([x], [y], yerr=[std], fmt="none", ecolor=color, capsize=3, zorder=2)
    front = _pareto([(p[0], p[1], p[2]) for p in points])
    if front:
        label = "Pareto front (higher accuracy at no higher cost)"
        ax.step(*xy_lists([p[1:] for p in front]), where="post", color="k", alpha=0.6, label=label)
    if diverged:
        ax.scatter([], [], marker="X", color=RED, label="diverged (not on the front)")
    stds = [p[3].spread_std("target", y_key) or 0.0 for p in points + diverged]
    lows = [p[2] - sd for p, sd in zip(points + diverged, stds)]
    highs = [p[2] + sd for p, sd in zip(points + diverged, stds)]
    ax.set_ylim(max(0.0, min(lows) - 0.05), min(1.02, max(highs) + 0.05))
    ax.set_xscale("log")
    xs = [p[1] for p in points + diverged]
    # Over a decade wide, so at least one labelled power of ten; room for labels on the right.
    ax.set_xlim(min(xs) / 3, max(xs) * 4)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{x_what} ({x_unit}, log scale)")
    ax.set_ylabel(y_label)
    ax.set_title("Accuracy against training cost per strategy")
    if front or diverged:
        ax.legend(loc="best", fontsize=8)

    parts = []
    if len(front) == 1:
        label, x, y = front[0]
        # A run at the same cost is not cheaper: say the tie rather than "the cheapest".
        same = [p[0] for p in points if p[0] != label and math.isclose(p[1], x, rel_tol=1e-9)]
        if same:
            parts.append(
                f"{label} is the most accurate ({y:.3f} at {x:.3g} {x_unit}) and ties on cost with "
                f"{join_labels(same)}, so it dominates"
            )
        else:
            parts.append(
                f"{label} is both the cheapest and the most accurate ({y:.3f} at {x:.3g} "
                f"{x_unit}), so it dominates"
            )
    elif front:
        (l0, x0, y0), (l1, x1, y1) = front[0], front[-1]
        parts.append(
            f"The Pareto front runs from {l0} ({y0:.3f} at {x0:.3g} {x_unit}) to {l1} ({y1:.3f}, "
            f"{x1 / x0:.3g}x the cost for {y1 - y0:+.3f})"
        )
    dominated = len(points) - len(front)
    if front and dominated:
        parts.append(
            f"{dominated} other strateg{'y is' if dominated == 1 else 'ies are'} dominated"
        )
    if diverged:
        parts.append(f"{join_labels(p[0] for p in diverged)} diverged (shown as ×)")
    if omitted:
        parts.append(f"not shown: {join_labels(omitted)}")
    n_seeds = max((p[3].n_seeds for p in points + diverged), default=0)
    if n_seeds > 1 and any(stds):
        widest = max(zip(stds, (p[0] for p in points + diverged)))
        parts.append(
            f"points are means over {n_seeds} seeds with ±1 standard deviation bars (widest: "
            f"{widest[1]}, {widest[0]:.3f}); strategies whose bars overlap are not separated "
            "by these seeds"
        )
    text = "; ".join(parts) + "."
    first = front[0][0] if front else None
    if first is not None and text.startswith(first) and first in STRATEGY_LABELS.values():
        text = text[0].upper() + text[1:]  # a display name opening the sentence
    return encode_png(fig), text


def _planned_epochs(entry: dict, points: list[tuple[float, float]]) -> float | None:
    """The epochs the curve's epoch counter runs to when the run completes.

    The main (last) stage's own epochs (feature extraction's head epochs, LP-FT's
    fine-tuning), else the run's ``epochs``; a file without its config falls back
    to the last epoch recorded.
    """
    config = entry.config or {}
    stages = [s for s in as_list(config.get("stages")) if isinstance(s, dict)]
    for value in ((stages[-1].get("epochs") if stages else None), config.get("epochs")):
        n = finite(value)
        if n is not None and n > 0:
            return n
    last = max((p[0] for p in points), default=None)
    return last if last is not None and last > 0 else None


def _progress(entry: dict, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``points`` with each epoch as the fraction of the run's planned epochs (0 to 1).

    LP-FT's probe point (epoch 0) sits at 0: its backbone is still the pretrained
    one when fine-tuning starts. A run that stopped early ends short of 1.
    """
    n = _planned_epochs(entry, points)
    if n is None:
        return []
    return [(min(max(x / n, 0.0), 1.0), y) for x, y in points]


def forgetting_curves_plot(results: dict) -> tuple[str, str] | None:
    """Source accuracy (or agreement with the pretrained model) over training per strategy.

    The x axis is the fraction of each run's planned epochs completed, so a
    head trained for 50 cheap epochs and a fine-tuning of 3 share one readable
    axis. Scratch starts from random weights, so it has no source knowledge to
    lose: it is drawn dashed and labelled as a baseline, not as forgetting.
    """
    entries = labelled_entries(results)
    measured = any(curve_values(e, "source_accuracy") for _, e in entries)
    key = "source_accuracy" if measured else "agreement"
    series = [(label, e, _progress(e, curve_values(e, key))) for label, e in entries]
    series = [s for s in series if s[2]]
    if not series:
        return None
    if key == "source_accuracy":
        y_label = "source accuracy, original head (fraction)"
        what = "source accuracy"
        befores = [e.forgetting.source_accuracy_before for _, e, _ in series]
        reference = next((b for b in befores if b is not None), None)
    else:
        y_label = "agreement with pretrained predictions on source (fraction)"
        what = "agreement with the pretrained model"
        reference = 1.0  # the pretrained model agrees with itself by definition

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for label, e, pts in series:
        diverged = e.status == "diverged"
        baseline = e.name == "scratch"
        if not baseline and reference is not None and pts[0][0] > 0:
            # Before any training the backbone is the pretrained one: every pretrained
            # strategy starts from the reference, so its line shows what it lost.
            pts = [(0.0, reference), *pts]
        style = {
            "color": strategy_colour(e),
            "marker": "o",
            "markersize": 4 if len(pts) <= 15 else 2,
        }
        if baseline:  # dashed and hollow: a reference level, not a curve of forgetting
            style.update(linestyle=(0, (5, 3)), markerfacecolor="white", alpha=0.8)
            label += " (baseline, not forgetting" + ("; diverged)" if diverged else ")")
        else:
            style["linestyle"] = ":" if diverged else "-"
            label += " (diverged)" if diverged else ""
        ax.plot(*xy_lists(pts), label=label, **style)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="-.", linewidth=1, label="pretrained model")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("fraction of each strategy's planned training epochs completed (0 to 1)")
    ax.set_ylabel(y_label)
    ax.set_title("Forgetting of the source task during fine-tuning")
    ax.legend(fontsize=7, loc="best", ncol=2)

    # Scratch starts from random weights: it has nothing to forget, so it would only
    # ever be the trivial minimum; it is compared only when it is all there is.
    finals = [(pts[-1][1], label) for label, e, pts in series if e.name != "scratch"]
    finals = finals or [(pts[-1][1], label) for label, _, pts in series]
    (low, low_name), (high, high_name) = min(finals), max(finals)
    ref_text = (
        f", against {reference:.3f} for the pretrained model" if reference is not None else ""
    )
    if len(finals) == 1:
        takeaway = f"By its last epoch, {what} is {low:.3f} under {low_name}{ref_text}."
    elif reference is not None and low >= reference - 0.005:
        takeaway = (
            f"No strategy lowered {what} by the last epoch: it ranges from {low:.3f} under "
            f"{low_name} to {high:.3f} under {high_name}{ref_text}."
        )
    else:
        takeaway = (
            f"By the last epoch, {what} ranges from {low:.3f} under {low_name} (most forgetting) "
            f"to {high:.3f} under {high_name}{ref_text}."
        )
    if any(e.name == "scratch" for _, e, _ in series) and len(series) > 1:
        takeaway += (
            f" Training from scratch (dashed) starts from random weights, so its {what} is "
            "a baseline, not forgetting."
        )
    return encode_png(fig), takeaway


def _layer_order(results: dict, rows: list[dict]) -> list[str]:
    names = [
        str(layer.get("name"))
        for layer in as_list(results.get("layers"))
        if isinstance(layer, dict)
    ]
    seen = [n for n in names if any(n in r for r in rows)]
    for r in rows:  # layers the assessment did not list, in the order the run wrote them
        seen.extend(n for n in r if n not in seen)
    return seen


def cka_heatmap(results: dict) -> tuple[str, str] | None:
    """Final linear CKA of each block to the pretrained model, strategy x layer."""
    rows, labels, names = [], [], []
    for label, e in labelled_entries(results):
        cka = e.forgetting.cka or {}
        if any(v is not None for v in cka.values()):
            rows.append(cka)
            labels.append(label)
            names.append(e.name)
    if not rows:
        return None
    layers = _layer_order(results, rows)
    data = np.array(
        [[np.nan if r.get(n) is None else r[n] for n in layers] for r in rows], dtype=float
    )

    sns.set_theme(style="white")
    fig, ax = plt.subplots(
        figsize=(max(5.5, 1.1 * len(layers) + 3.5), max(2.6, 0.45 * len(rows) + 1.6))
    )
    cbar = {"label": "CKA to pretrained (0 to 1)"}  # short: the bar is only as tall as the rows
    ticks = {"xticklabels": [short_name(n) for n in layers], "yticklabels": labels}
    sns.heatmap(
        data,
        mask=np.isnan(data),
        annot=True,
        fmt=".2f",
        vmin=0,
        vmax=1,
        cmap="viridis",
        linewidths=0.5,
        cbar_kws=cbar,
        ax=ax,
        **ticks,
    )
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("strategy")
    ax.set_title("Representation similarity to the pretrained model after fine-tuning")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    plt.setp(ax.get_yticklabels(), rotation=0)

    # Scratch's low CKA is its random start, not drift: it is left out of the extremes.
    keep = [i for i, n in enumerate(names) if n != "scratch"] or list(range(len(rows)))
    sub = data[keep]
    i, j = np.unravel_index(np.nanargmin(np.where(np.isnan(sub), np.inf, sub)), sub.shape)
    means = np.nanmean(sub, axis=1)
    top = int(np.nanargmax(means))
    takeaway = (
        f"Representations moved most under {labels[keep[i]]} at {layers[j]} (CKA {sub[i, j]:.2f})"
    )
    if len(keep) > 1:
        takeaway += f" and least under {labels[keep[top]]} (mean CKA {means[top]:.2f})"
        # A run whose CKA is the same at every layer (e.g. all 1) has no layer of largest change.
        lows = [
            int(np.nanargmin(np.where(np.isnan(row), np.inf, row)))
            for row in sub
            if np.nanmax(row) - np.nanmin(row) > 1e-9
        ]
        if lows:
            mode = max(sorted(set(lows)), key=lows.count)
            takeaway += (
                f"; the largest change is at {layers[mode]} in {lows.count(mode)} of "
                f"{len(keep)} strategies"
            )
    return encode_png(fig), takeaway + "."
