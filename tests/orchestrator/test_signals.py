"""Signals become flags the round loop reads: SIGTERM and SIGHUP preempt (resumable), Ctrl-C cancels."""

import os
import signal

from orchestrator.signals import stop_signals


def test_sighup_and_sigterm_preempt_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGHUP)
    for sig in (signal.SIGHUP, signal.SIGTERM):
        flags: dict[str, bool] = {}
        with stop_signals(flags):
            os.kill(os.getpid(), sig)  # a closed terminal: before, the controller died without a word
        assert flags == {"preempted": True}
    assert signal.getsignal(signal.SIGHUP) == before
