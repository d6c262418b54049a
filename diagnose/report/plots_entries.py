"""Reading comparison entries for plots: display labels, one colour per strategy, curves.

Shared by :mod:`diagnose.report.plots_compare` and
:mod:`diagnose.report.plots_training`. Entries are read as
:class:`diagnose.core.StrategyEntry` (a failed run has only a name and status:
its sections read as None).
"""

from __future__ import annotations

import seaborn as sns

from diagnose.core import (
    STRATEGY_NAMES,
    StrategyEntry,
    finite,
    strategy_label,
)

__all__ = [
    "BLUE",
    "GREEN",
    "ORANGE",
    "PURPLE",
    "RED",
    "as_list",
    "curve_values",
    "labelled_entries",
    "strategy_colour",
    "xy_lists",
]

RED = "#b3261e"  # diverged runs, in every plot


BLUE, ORANGE, GREEN, PURPLE = "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"


def as_list(value) -> list:
    return value if isinstance(value, list) else []


def labelled_entries(results: dict) -> list[tuple[str, StrategyEntry]]:
    """``(label, entry)`` per strategy, each read with :meth:`StrategyEntry.from_dict`: its
    display name (:mod:`diagnose.core.names`); repeated names get a ``#k`` suffix so
    labels stay unique."""
    out: list[tuple[str, StrategyEntry]] = []
    seen: dict[str, int] = {}
    for raw in as_list(results.get("strategies")):
        if not isinstance(raw, dict):
            continue
        entry = StrategyEntry.from_dict(raw)
        name = str(entry.name or "?")
        seen[name] = seen.get(name, 0) + 1
        label = strategy_label(name)
        out.append((label if seen[name] == 1 else f"{label} #{seen[name]}", entry))
    return out


def strategy_colour(entry: StrategyEntry) -> str:
    # One colour per strategy name across every plot, in the canonical strategy order.
    palette = sns.color_palette("tab10", 10).as_hex()
    name = entry.name
    index = STRATEGY_NAMES.index(name) if name in STRATEGY_NAMES else len(STRATEGY_NAMES)
    return palette[index % len(palette)]


def curve_values(entry: StrategyEntry, key: str) -> list[tuple[float, float]]:
    points = []
    for point in entry.curves or ():
        if isinstance(point, dict):
            x, y = finite(point.get("epoch")), finite(point.get(key))
            if x is not None and y is not None:
                points.append((x, y))
    return points


def xy_lists(points) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]
