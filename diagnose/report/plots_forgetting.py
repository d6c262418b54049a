"""The forgetting plots of a strategy comparison: source accuracy over training, and CKA.

Like :mod:`diagnose.report.plots_compare`, every function reads only the results dict
(its ``strategies`` list) and returns ``(png_base64, takeaway)``, or ``None`` when the
data it needs is absent; every field is read defensively. Example::

    png_b64, takeaway = forgetting_curves_plot(results)  # None when nothing was measured
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from diagnose.core import finite  # noqa: E402
from diagnose.report.plots import encode_png, short_name  # noqa: E402
from diagnose.report.plots_entries import (  # noqa: E402
    as_list,
    curve_values,
    labelled_entries,
    strategy_colour,
    xy_lists,
)

__all__ = ["cka_heatmap", "forgetting_curves_plot"]


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
        _draw_curve(ax, label, e, pts, reference)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="-.", linewidth=1, label="pretrained model")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("fraction of each strategy's planned training epochs completed (0 to 1)")
    ax.set_ylabel(y_label)
    ax.set_title("Forgetting of the source task during fine-tuning")
    ax.legend(fontsize=7, loc="best", ncol=2)
    return encode_png(fig), _forgetting_takeaway(series, what, reference)


def _draw_curve(ax, label: str, e, pts, reference: float | None) -> None:
    """One strategy's curve: solid, dotted when it diverged, dashed for the scratch baseline."""
    diverged = e.status == "diverged"
    baseline = e.name == "scratch"
    if not baseline and reference is not None and pts[0][0] > 0:
        # Before any training the backbone is the pretrained one: every pretrained
        # strategy starts from the reference, so its line shows what it lost.
        pts = [(0.0, reference), *pts]
    style = {"color": strategy_colour(e), "marker": "o", "markersize": 4 if len(pts) <= 15 else 2}
    if baseline:  # dashed and hollow: a reference level, not a curve of forgetting
        style.update(linestyle=(0, (5, 3)), markerfacecolor="white", alpha=0.8)
        label += " (baseline, not forgetting" + ("; diverged)" if diverged else ")")
    else:
        style["linestyle"] = ":" if diverged else "-"
        label += " (diverged)" if diverged else ""
    ax.plot(*xy_lists(pts), label=label, **style)


def _forgetting_takeaway(series, what: str, reference: float | None) -> str:
    """Where the curves end, against the pretrained model's level."""
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
    return takeaway


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

    return encode_png(fig), _cka_takeaway(data, labels, names, layers)


def _cka_takeaway(data: np.ndarray, labels: list[str], names: list[str], layers) -> str:
    """Where representations moved most and least, and the layer of largest change."""
    # Scratch's low CKA is its random start, not drift: it is left out of the extremes.
    keep = [i for i, n in enumerate(names) if n != "scratch"] or list(range(len(names)))
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
    return takeaway + "."
