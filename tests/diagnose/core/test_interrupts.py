"""The stop request: recorded by the CLI's handlers, kept even where a library swallows
the KeyboardInterrupt it raised."""

from __future__ import annotations

import signal
import threading

import pytest

from diagnose.core import interrupt_requested, raise_if_interrupted, stop_on_signals


def test_sigterm_inside_raises_and_is_recorded_then_handlers_are_restored():
    before_term, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_on_signals():
        assert not interrupt_requested()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)  # the handler runs before this returns
        assert interrupt_requested()  # what raised it may be swallowed: the record stays
        with pytest.raises(KeyboardInterrupt) as info:
            raise_if_interrupted(ValueError("wrapped"))
        assert isinstance(info.value.__cause__, ValueError)
    assert not interrupt_requested()  # cleared on exit: the next run starts clean
    assert signal.getsignal(signal.SIGTERM) is before_term
    assert signal.getsignal(signal.SIGINT) is before_int


def test_a_swallowed_sigint_is_still_a_stop():
    with stop_on_signals():
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # as a library wrapping a callback's error would
        assert interrupt_requested()
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)  # nothing happens
            assert not interrupt_requested()
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_blocked_signals_are_unblocked_inside_and_the_mask_is_left_so():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        with stop_on_signals():
            assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def test_outside_the_main_thread_nothing_changes():
    seen = {}

    def work():
        with stop_on_signals():
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen["handler"] is before
