"""SIGTERM and Ctrl-C as flags the round loop reads, never as exceptions thrown into a library."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def stop_signals(flags: dict[str, bool]):
    """SIGTERM (and SIGHUP) and a first Ctrl-C only set a flag that the round loop acts on at its next check
    (at most poll_s away): an exception raised from a signal handler could land inside a library
    (MLflow, SQLAlchemy) that wraps or swallows it. A second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def term(signum, frame):
        flags["preempted"] = True

    def intr(signum, frame):
        if flags.get("interrupted"):
            raise KeyboardInterrupt
        flags["interrupted"] = True

    # SIGHUP (the terminal closed, an ssh session dropped) is a preemption too: recorded and
    # resumable, not a controller gone without a word
    previous = (signal.signal(signal.SIGTERM, term), signal.signal(signal.SIGINT, intr),
                signal.signal(signal.SIGHUP, term))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        signal.signal(signal.SIGHUP, previous[2])
