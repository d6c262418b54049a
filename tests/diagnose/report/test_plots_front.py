"""The learning-forgetting front plot: read from the results, titled, labelled, with a takeaway."""

from __future__ import annotations

from diagnose.decide import learning_forgetting_front, select_strategy
from diagnose.report import plots_front
from diagnose.report.plots_front import front_plot
from tests.diagnose.decide.test_front import ROWS


def _results(budget=None):
    return {
        "strategies": ROWS,
        "front": [p.to_dict() for p in learning_forgetting_front(ROWS)],
        "comparison_recommendation": select_strategy(ROWS, max_forgetting=budget).to_dict(),
    }


def test_the_front_plot_marks_the_front_and_says_what_the_budget_costs(monkeypatch):
    figs = []
    monkeypatch.setattr(plots_front, "encode_png", lambda fig, rect=None: figs.append(fig) or "png")
    png, takeaway = front_plot(_results(budget=0.05))
    (ax,) = figs[0].axes
    assert png == "png" and ax.get_title() and "fraction" in ax.get_xlabel()
    assert "fraction" in ax.get_ylabel()
    assert "from feature extraction" in takeaway and "full fine-tuning" in takeaway
    assert "costs 0.040 validation accuracy" in takeaway
    assert "2 of 5 strategies are dominated" in takeaway
    front_line = [line for line in ax.get_lines() if line.get_label().startswith("front")]
    assert list(front_line[0].get_xdata()) == [0.0, 0.02, 0.1]


def test_no_front_no_plot():
    assert front_plot({"strategies": ROWS[:1], "front": []}) is None
    assert front_plot({"strategies": []}) is None
