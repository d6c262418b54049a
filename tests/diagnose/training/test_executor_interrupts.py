"""A signal whose KeyboardInterrupt a library swallowed still stops the comparison."""

from __future__ import annotations

import signal

import pytest
import torch
from torch import nn

from diagnose.core import stop_on_signals
from diagnose.training.config import TrainConfig
from diagnose.training.executor import Job, Unit, execute


def _job() -> Job:
    return Job(
        net=nn.Linear(2, 2),
        head="",
        blocks=[],
        data=None,
        tracker=None,
        config=TrainConfig(),
        device=torch.device("cpu"),
    )


def _interrupted_inside(wrap: bool):
    def run(strategy, *args, **kwargs):
        if strategy == "b":
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt as exc:  # a library turning it into its own error
                if wrap:
                    raise RuntimeError("callback failed") from exc
        return {"name": strategy, "status": "ok"}

    return run


@pytest.mark.parametrize("wrap", [True, False], ids=["wrapped", "swallowed"])
def test_a_swallowed_interrupt_stops_after_the_unit_it_hit(wrap):
    done = []
    units = [Unit("a", 0), Unit("b", 0), Unit("c", 0)]
    with stop_on_signals(), pytest.raises(KeyboardInterrupt):
        execute(
            units,
            job=_job(),
            on_done=lambda unit, record, warnings: done.append((unit.name, record["status"])),
            run=_interrupted_inside(wrap),
            progress=False,
        )
    # Wrapped: "b" is not recorded as a failed strategy. Swallowed: "b" finished and is
    # kept. Either way "c" never starts.
    assert done == ([("a", "ok")] if wrap else [("a", "ok"), ("b", "ok")])


def test_without_a_signal_a_failing_strategy_is_recorded_and_the_run_goes_on():
    done = []

    def run(strategy, *args, **kwargs):
        if strategy == "b":
            raise RuntimeError("broken")
        return {"name": strategy, "status": "ok"}

    with stop_on_signals():
        execute(
            [Unit("a", 0), Unit("b", 0), Unit("c", 0)],
            job=_job(),
            on_done=lambda unit, record, warnings: done.append((unit.name, record["status"])),
            run=run,
            progress=False,
        )
    assert done == [("a", "ok"), ("b", "failed"), ("c", "ok")]
