"""The learning–forgetting front of a comparison, a base64 PNG with a one-sentence takeaway.

It reads only the results: every strategy's validation accuracy against its
forgetting (``results["front"]`` lists the strategies on the Pareto front, as
:func:`diagnose.decide.learning_forgetting_front` found them), marker area by
training FLOPs, and the forgetting budget when one was set. Example::

    png_b64, takeaway = front_plot(results)  # None when no run has both numbers
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from diagnose.core import finite, strategy_label  # noqa: E402
from diagnose.report.plots import encode_png  # noqa: E402
from diagnose.report.plots_entries import as_list, labelled_entries, strategy_colour  # noqa: E402

__all__ = ["front_plot", "race_front_plot"]


def _sizes(flops: list[float | None]) -> list[float]:
    """Marker areas growing with log10 FLOPs (a fixed one where FLOPs are unknown)."""
    logs = [math.log10(f) for f in flops if f]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 0.0)
    span = max(hi - lo, 1e-9)
    return [60.0 if not f else 40.0 + 260.0 * (math.log10(f) - lo) / span for f in flops]


def front_plot(results: dict) -> tuple[str, str] | None:
    """Validation accuracy against forgetting per strategy, the front joined by a line."""
    front = [p for p in as_list(results.get("front")) if isinstance(p, dict)]
    on_front = {p.get("name") for p in front}
    measure = front[0].get("measure") if front else None
    points = []
    for label, e in labelled_entries(results):
        drop = e.forgetting.source_accuracy_drop
        agreement = e.forgetting.agreement
        forgot = drop if measure != "disagreement" and drop is not None else None
        if forgot is None and agreement is not None:
            forgot = 1.0 - agreement
        # Scratch forgets nothing it knew (it starts random): no point on this plot.
        if (
            e.ok
            and e.name != "scratch"
            and e.target.val_accuracy is not None
            and forgot is not None
        ):
            points.append((label, e, forgot, e.target.val_accuracy))
    if len(points) < 2 or not front:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    sizes = _sizes([e.cost.flops for _, e, _, _ in points])
    span = (
        max(0.05, max(p[2] for p in points)),
        max(0.05, max(p[3] for p in points) - min(p[3] for p in points)),
    )
    placed: list[tuple[float, float]] = []
    for (label, e, x, y), size in sorted(zip(points, sizes), key=lambda ps: -ps[0][3]):
        edge = "black" if e.name in on_front else "none"
        ax.scatter([x], [y], s=size, color=strategy_colour(e), edgecolor=edge, linewidth=1.2,
                   alpha=0.85, zorder=3)  # fmt: skip
        # Labels of points close on both axes are stacked downwards instead of overprinting.
        # (A label runs to the right of its point: a neighbour up to ~a label's width away
        # along x still collides.)
        near = sum(
            abs(x - px) < 0.35 * span[0] and abs(y - py) < 0.06 * span[1] for px, py in placed
        )
        placed.append((x, y))
        lead = {"arrowstyle": "-", "color": "grey", "linewidth": 0.6} if near else None
        ax.annotate(label, (x, y), xytext=(24 if near else 7, 3 - 11 * near),
                    textcoords="offset points", fontsize=8, arrowprops=lead)  # fmt: skip
    xs = [finite(p.get("forgetting")) for p in front]
    ys = [finite(p.get("val_accuracy")) for p in front]
    ax.plot(
        xs, ys, color="black", alpha=0.6, label="front: no strategy learns more for less forgetting"
    )
    budget = finite((results.get("comparison_recommendation") or {}).get("max_forgetting"))
    if budget is not None:
        ax.axvline(budget, color="grey", linestyle="--", label=f"forgetting budget ({budget:.3f})")
    what = "disagreement with the pretrained model" if measure == "disagreement" else (
        "source accuracy drop"
    )  # fmt: skip
    ax.set_xlabel(f"forgetting: {what} (fraction; lower is better)")
    ax.set_ylabel("validation accuracy on the target (fraction)")
    ax.set_title("What each strategy learned against what it forgot")
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    # Below the axes: inside, the legend hid the points that sit in its corner.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=2, frameon=False)
    return encode_png(fig), _takeaway(front, len(points), budget, results)


def _takeaway(front: list[dict], n: int, budget: float | None, results: dict) -> str:
    """Which strategies span the front, and what the budget costs in accuracy."""
    first, last = front[0], front[-1]
    if len(front) == 1:
        text = (
            f"{strategy_label(first['name'])} both forgets least and learns most "
            f"({first['val_accuracy']:.3f} at {first['forgetting']:.3f} forgetting): it "
            f"dominates the other {n - 1}"
        )
    else:
        text = (
            f"The front runs from {strategy_label(first['name'])} ({first['val_accuracy']:.3f} "
            f"accuracy, {first['forgetting']:.3f} forgetting) to {strategy_label(last['name'])} "
            f"({last['val_accuracy']:.3f}, {last['forgetting']:.3f}); {n - len(front)} of {n} "
            "strategies are dominated; marker area grows with training FLOPs"
        )
    cost = finite((results.get("comparison_recommendation") or {}).get("budget_cost"))
    if budget is not None and cost is not None:
        text += f"; the forgetting budget of {budget:.3f} costs {cost:.3f} validation accuracy"
    return text + "."


def race_front_plot(results: dict) -> tuple[str, str] | None:
    """The trial race's front: each strategy, depth or rank at its best LR after the full
    epochs, held-out accuracy against what it forgot (``trials["front_rows"]``)."""
    rec = results.get("recommendation") or {}
    trials = rec.get("trials") or {}
    rows = [r for r in as_list(trials.get("front_rows")) if isinstance(r, dict)]
    if len(rows) < 2:
        return None
    return front_plot(
        {
            "strategies": rows,
            "front": trials.get("front"),
            "comparison_recommendation": {"max_forgetting": rec.get("max_forgetting")},
        }
    )
