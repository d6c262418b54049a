"""Plots of a tracked fine-tuning run (kind "track"), each a base64 PNG with a takeaway.

Every function reads only the results dict (its ``history``: one measurement per
row, in the order they were taken) and returns ``(png_base64, takeaway)`` or
``None`` when the data it needs is absent.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from diagnose.core import finite
from diagnose.report.plots import encode_png, short_name
from diagnose.report.plots_entries import BLUE, GREEN, RED

__all__ = [
    "track_cka_plot",
    "track_drift_heatmap",
    "track_forgetting_plot",
]


def _history(results: dict) -> list[dict]:
    rows = results.get("history")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(finite(r.get("step")), finite(r.get(key))) for r in rows]
    pts = [(s, v) for s, v in pts if s is not None and v is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _blocks(rows: list[dict], key: str) -> list[str]:
    names: list[str] = []
    for r in rows:
        for name in r.get(key) or {}:
            if name not in names:
                names.append(name)
    return names


def track_forgetting_plot(results: dict):
    """Source accuracy (original head) and agreement with the pretrained model over steps."""
    rows = _history(results)
    acc_x, acc_y = _series(rows, "source_accuracy")
    agr_x, agr_y = _series(rows, "agreement")
    if not acc_x and not agr_x:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    # Agreement dashed and under: with a pretrained accuracy of 100% the two coincide.
    ax.plot(
        agr_x,
        [100 * v for v in agr_y],
        marker="s",
        ms=7,
        ls="--",
        color=BLUE,
        label="agreement with pretrained",
    )
    if acc_x:
        ax.plot(
            acc_x,
            [100 * v for v in acc_y],
            marker="o",
            ms=4,
            color=GREEN,
            label="source accuracy (original head)",
        )
    ref = finite(results.get("reference_source_accuracy"))
    budget = finite((results.get("config") or {}).get("max_forgetting"))
    if ref is not None:
        ax.axhline(100 * ref, color=GREEN, ls=":", lw=1, label=f"pretrained ({100 * ref:.1f}%)")
    if budget is not None:
        # The budget bounds the drop from the pretrained accuracy, or the disagreement.
        line = 100 * (ref - budget) if ref is not None and acc_x else 100 * (1 - budget)
        ax.axhline(line, color=RED, ls="--", lw=1, label=f"forgetting budget ({budget:.3f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("% of tracked source images")
    ax.set_title("Forgetting during fine-tuning: source accuracy and agreement")
    ax.legend(loc="lower left", fontsize=8)
    key = "source_accuracy_drop" if acc_x else "forgetting"
    fx, fy = _series(rows, key)
    worst = max(range(len(fy)), key=lambda i: fy[i]) if fy else None
    what = "source accuracy drop" if acc_x else "disagreement with the pretrained model"
    if worst is None:
        takeaway = "Forgetting could not be measured at any step."
    else:
        takeaway = f"The largest {what} was {fy[worst]:.3f} at step {fx[worst]:g}" + (
            f"; the budget {budget:.3f} was first exceeded at step {results.get('exceeded_at')}."
            if results.get("exceeded")
            else (f", within the budget {budget:.3f}." if budget is not None else ".")
        )
    return encode_png(fig), takeaway


def track_cka_plot(results: dict):
    """Linear CKA of each block against the pretrained features, over steps."""
    rows = _history(results)
    blocks = _blocks(rows, "cka")
    if not blocks:
        return None
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    palette = sns.color_palette("viridis", len(blocks))
    last: list[tuple[float, str]] = []
    for colour, block in zip(palette, blocks):
        pts = [(finite(r.get("step")), finite((r.get("cka") or {}).get(block))) for r in rows]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker=".",
                color=colour,
                label=short_name(block),
            )
            last.append((pts[-1][1], block))
    if not last:
        plt.close(fig)
        return None
    ax.set_xlabel("training step")
    ax.set_ylabel("linear CKA (0 to 1)")
    ax.set_title("Representation change per block during fine-tuning")
    ax.legend(loc="lower left", fontsize=7, ncol=2)
    low_v, low_b = min(last)
    takeaway = (
        f"At the last measurement {low_b} had changed most (CKA {low_v:.3f}; 1.0 = the "
        "pretrained representation up to rotation and scale)."
    )
    return encode_png(fig), takeaway


def track_drift_heatmap(results: dict):
    """Relative weight drift per block (rows) at each measured step (columns)."""
    rows = _history(results)
    blocks = _blocks(rows, "drift")
    if not blocks or not rows:
        return None
    grid = np.array(
        [[finite((r.get("drift") or {}).get(b)) or np.nan for r in rows] for b in blocks],
        dtype=float,
    )
    if not np.isfinite(grid).any():
        return None
    steps = [r.get("step") for r in rows]
    sns.set_theme(style="white")
    fig, ax = plt.subplots(figsize=(7.5, 0.5 + 0.32 * len(blocks) + 1.2))
    sns.heatmap(
        grid,
        ax=ax,
        cmap="magma_r",
        cbar_kws={"label": "‖w − w₀‖ / ‖w₀‖"},
        xticklabels=[str(s) for s in steps],
        yticklabels=[short_name(b) for b in blocks],
    )
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.set_xlabel("training step")
    ax.set_ylabel("block (forward order)")
    ax.set_title("Relative weight drift per block")
    last = grid[:, -1]
    i = int(np.nanargmax(last)) if np.isfinite(last).any() else int(np.nanargmax(grid.max(1)))
    takeaway = (
        f"{blocks[i]} moved most: {np.nanmax(grid[i]):.3f} of its pretrained norm "
        "(0 = unchanged; the new head is excluded)."
    )
    return encode_png(fig), takeaway
