"""A stop request (Ctrl-C or SIGTERM) that survives code which catches what it raises.

Python turns SIGINT, and the CLI turns SIGTERM, into a KeyboardInterrupt raised
wherever the main thread happens to be. Code that catches broadly can then lose
it: a library wrapping the exception of a callback in its own error, a training
run recorded as "failed" by the executor, which goes on to the next strategy.
The run then ends with exit status 0 as if no signal had come. The CLI's
handlers therefore also record the request here, and the workflows check it
where they would otherwise carry on (:func:`raise_if_interrupted`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["interrupt_requested", "raise_if_interrupted", "stop_on_signals"]

_requested: list[int] = []  # the signals received since the handlers were installed


def interrupt_requested() -> bool:
    """Whether a stop was requested since :func:`stop_on_signals` was entered."""
    return bool(_requested)


def raise_if_interrupted(cause: BaseException | None = None) -> None:
    """Raise KeyboardInterrupt (from ``cause``) if a stop was requested."""
    if _requested:
        raise KeyboardInterrupt(f"signal {_requested[0]}") from cause


def _handler(signum, frame):  # noqa: ARG001
    _requested.append(int(signum))  # first the record, which survives what catches the raise
    raise KeyboardInterrupt


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt and record the request; on exit the
    previous handlers are back and the record is cleared.

    Outside the main thread (where Python cannot install handlers) nothing changes.
    A SIGINT that was ignored on entry (a job a shell started with ``&``) stays
    ignored. Both signals are unblocked in this thread: a launcher that blocked
    them would otherwise leave the process deaf to them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        wanted.append(signal.SIGINT)
    previous = {s: signal.signal(s, _handler) for s in wanted}
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _requested.clear()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _requested.clear()
