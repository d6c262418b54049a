"""The trial race's plot: held-out accuracy against compute, rung by rung, per candidate."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from diagnose.core import strategy_label  # noqa: E402
from diagnose.report.plots import encode_png  # noqa: E402

__all__ = [
    "race_plot",
]


def _arm_label(c: dict) -> str:
    label = strategy_label(c["strategy"])
    return label if c.get("depth") is None else f"{label}, last {c['depth']}"


def race_plot(results: dict):
    """Every candidate's held-out accuracy after each rung against its cumulative FLOPs."""
    trials = (results.get("recommendation") or {}).get("trials") or {}
    cands = [c for c in trials.get("candidates") or [] if c.get("rungs")]
    if not cands:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    arms = sorted({_arm_label(c) for c in cands})
    colours = dict(zip(arms, sns.color_palette("tab10", n_colors=max(len(arms), 3))))
    pick = trials.get("pick")
    seen = set()
    for c in cands:
        xs, total = [], 0
        for r in c["rungs"]:
            total += r["flops"]
            xs.append(total / 1e9)
        ys = [r["val_accuracy"] for r in c["rungs"]]
        arm = _arm_label(c)
        chosen = c["key"] == pick
        ax.plot(
            xs,
            ys,
            marker="*" if chosen else "o",
            markersize=13 if chosen else 4,
            linewidth=2.5 if chosen else 1,
            alpha=1.0 if chosen or len(c["rungs"]) > 1 else 0.45,
            color=colours[arm],
            label=arm if arm not in seen else None,
            zorder=3 if chosen else 2,
        )
        seen.add(arm)
    ax.set_xscale("log")
    ax.set_xlabel("training compute spent on the candidate so far (GFLOPs, log scale)")
    ax.set_ylabel("held-out target accuracy (fraction)")
    ax.set_title("Trial race: accuracy after each rung against compute")
    ax.legend(fontsize=8, loc="lower right", ncol=2)
    best = next(c for c in cands if c["key"] == pick) if pick else None
    frac = (
        trials["flops_spent"] / trials["full_flops_estimate"]
        if trials.get("full_flops_estimate")
        else None
    )
    takeaway = (
        f"{len(cands)} candidates started; {sum(len(c['rungs']) > 1 for c in cands)} continued "
        "past the first rung"
        + (
            f"; the pick ({best['key']}, star) reached {best['rungs'][-1]['val_accuracy']:.3f}"
            if best
            else ""
        )
        + (f", for {100 * frac:.0f}% of a full sweep's FLOPs." if frac is not None else ".")
    )
    return encode_png(fig), takeaway
