"""Rendering: results.json to a self-contained HTML report and its plots. A pure reader of results."""

from diagnose.report.plots import (
    class_balance_plot,
    encode_png,
    gap_plot,
    lr_find_plot,
    probe_plot,
    short_name,
)
from diagnose.report.plots_audit import audit_cka_plot, per_class_forgetting_plot
from diagnose.report.plots_compare import tradeoff_plot
from diagnose.report.plots_entries import (
    BLUE,
    GREEN,
    ORANGE,
    PURPLE,
    RED,
    as_list,
    curve_values,
    labelled_entries,
    strategy_colour,
    xy_lists,
)
from diagnose.report.plots_forgetting import cka_heatmap, forgetting_curves_plot
from diagnose.report.plots_front import front_plot, race_front_plot
from diagnose.report.plots_race import race_plot
from diagnose.report.plots_track import track_cka_plot, track_drift_heatmap, track_forgetting_plot
from diagnose.report.plots_training import training_curves_plot
from diagnose.report.render import check_out_dir, render_html, render_report_file, write_outputs

__all__ = [
    "as_list",
    "audit_cka_plot",
    "BLUE",
    "check_out_dir",
    "cka_heatmap",
    "class_balance_plot",
    "curve_values",
    "encode_png",
    "forgetting_curves_plot",
    "front_plot",
    "gap_plot",
    "GREEN",
    "labelled_entries",
    "lr_find_plot",
    "ORANGE",
    "per_class_forgetting_plot",
    "probe_plot",
    "PURPLE",
    "race_front_plot",
    "race_plot",
    "RED",
    "render_html",
    "render_report_file",
    "short_name",
    "strategy_colour",
    "track_cka_plot",
    "track_drift_heatmap",
    "track_forgetting_plot",
    "tradeoff_plot",
    "training_curves_plot",
    "write_outputs",
    "xy_lists",
]
