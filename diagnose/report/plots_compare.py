"""The accuracy-against-cost plot of the strategy comparison, a base64 PNG with a title, labelled axes and a takeaway.

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
import seaborn as sns  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from diagnose.core import STRATEGY_LABELS, join_labels  # noqa: E402
from diagnose.report.plots import encode_png  # noqa: E402
from diagnose.report.plots_entries import RED, labelled_entries, strategy_colour, xy_lists

__all__ = ["tradeoff_plot"]


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
    points, diverged, omitted, x_key, y_key = _tradeoff_points(labelled_entries(results))
    if not points and not diverged:
        return None
    x_unit, x_what = ("FLOPs", "training compute") if x_key == "flops" else ("s", "wall time")
    shown = points + diverged
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    span = max(0.05, max(p[2] for p in shown) - min(p[2] for p in shown))
    placed: list[tuple[float, float]] = []
    for label, x, y, e in sorted(shown, key=lambda p: -p[2]):
        _draw_point(ax, label, x, y, e, y_key, span, placed)
    front = _pareto([(p[0], p[1], p[2]) for p in points])
    if front:
        label = "Pareto front (higher accuracy at no higher cost)"
        ax.step(*xy_lists([p[1:] for p in front]), where="post", color="k", alpha=0.6, label=label)
    if diverged:
        ax.scatter([], [], marker="X", color=RED, label="diverged (not on the front)")
    stds = [p[3].spread_std("target", y_key) or 0.0 for p in shown]
    lows = [p[2] - sd for p, sd in zip(shown, stds)]
    highs = [p[2] + sd for p, sd in zip(shown, stds)]
    ax.set_ylim(max(0.0, min(lows) - 0.05), min(1.02, max(highs) + 0.05))
    ax.set_xscale("log")
    xs = [p[1] for p in shown]
    # Over a decade wide, so at least one labelled power of ten; room for labels on the right.
    ax.set_xlim(min(xs) / 3, max(xs) * 4)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{x_what} ({x_unit}, log scale)")
    ax.set_ylabel(f"{'test' if y_key == 'test_accuracy' else 'validation'} accuracy (fraction)")
    ax.set_title("Accuracy against training cost per strategy")
    if front or diverged:
        ax.legend(loc="best", fontsize=8)
    text = _tradeoff_takeaway(front, points, diverged, omitted, stds, x_unit)
    return encode_png(fig), text


def _tradeoff_points(entries):
    """``(points, diverged, omitted, x_key, y_key)``: the runs that can be placed (each
    ``(label, cost, accuracy, entry)``), those that diverged, and those left out, why."""
    ran = [e for _, e in entries if e.status != "failed"]
    y_key = "test_accuracy"
    if not any(getattr(e.target, y_key) is not None for e in ran):
        y_key = "val_accuracy"  # a partial file without test accuracy still gets a plot
    x_key = "flops" if any(e.cost.flops is not None for e in ran) else "wall_s"
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
    return points, diverged, omitted, x_key, y_key


def _draw_point(ax, label, x, y, e, y_key, span, placed) -> None:
    """One run's marker, label and seed error bar; labels of points close on both axes
    are stacked downwards instead of overprinting (``placed``: the points drawn so far)."""
    bad = e.status != "ok"
    if bad:
        ax.scatter([x], [y], s=70, marker="X", color=RED, zorder=3)
    else:
        ax.scatter(
            [x], [y], s=55, color=strategy_colour(e), edgecolor="black", linewidth=0.5, zorder=3
        )
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


def _tradeoff_takeaway(front, points, diverged, omitted, stds, x_unit: str) -> str:
    """The plot's one-sentence takeaway: the front, what it dominates, what is missing."""
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
    shown = points + diverged
    n_seeds = max((p[3].n_seeds for p in shown), default=0)
    if n_seeds > 1 and any(stds):
        widest = max(zip(stds, (p[0] for p in shown)))
        parts.append(
            f"points are means over {n_seeds} seeds with ±1 standard deviation bars (widest: "
            f"{widest[1]}, {widest[0]:.3f}); strategies whose bars overlap are not separated "
            "by these seeds"
        )
    text = "; ".join(parts) + "."
    first = front[0][0] if front else None
    if first is not None and text.startswith(first) and first in STRATEGY_LABELS.values():
        text = text[0].upper() + text[1:]  # a display name opening the sentence
    return text
