"""Round callbacks: everything that watches a run's rounds without deciding anything.

The driver calls each callback in order at a round's start, on each batch of live records, after
its commit, and at the run's end: the user's `Reporter` (the CLI's progress display), the store's
live progress row (what `cpt runs show` / `watch` read mid-round), and MLflow with its plots
(orchestrator/run_tracking.py). A callback never changes the run; the store stays the truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from store.records import RoundPlan, RoundResult
from store.runs import RunStore


class Reporter(Protocol):
    """What a user-facing display implements (the CLI's live progress bar, a test's probe)."""

    def round_started(self, plan: RoundPlan, stage: str) -> None: ...
    def progress(self, step: int, total: int, loss: float, lr: float) -> None: ...
    def round_finished(self, plan: RoundPlan, result: RoundResult) -> None: ...
    def message(self, text: str) -> None: ...


class SilentReporter:
    def round_started(self, plan, stage): pass
    def progress(self, step, total, loss, lr): pass
    def round_finished(self, plan, result): pass
    def message(self, text): pass


class RoundCallback:
    """Hooks around each round; every one is optional."""

    def round_started(self, plan: RoundPlan, stage: str) -> None:
        pass

    def progress(self, round_id: int, plan: RoundPlan, records: list[dict[str, Any]]) -> None:
        """Live records of the running round (rank 0's reports, every `log_every` steps)."""

    def round_finished(self, round_id: int, plan: RoundPlan, result: RoundResult) -> None:
        """After the round's commit (its result is in the store)."""

    def run_ended(self, status: str) -> None:
        pass


class ToReporter(RoundCallback):
    """Forwards rounds to the user's Reporter, looked up at call time (the CLI sets it after the
    controller is built), with steps counted over the whole run."""

    def __init__(self, reporter: Callable[[], Reporter], total_steps: int):
        self.reporter, self.total = reporter, total_steps

    def round_started(self, plan, stage):
        self.reporter().round_started(plan, stage)

    def progress(self, round_id, plan, records):
        for p in records:
            step = plan.global_step_start - plan.stage_step_start + p["step"]
            self.reporter().progress(step, self.total, p["loss"], p["lr"])

    def round_finished(self, round_id, plan, result):
        self.reporter().round_finished(plan, result)


class StoreProgress(RoundCallback):
    """The latest live record to the store, at most once a second (a round's first always)."""

    def __init__(self, store: RunStore, every_s: float = 1.0):
        self.store, self.every_s, self._at, self._round = store, every_s, 0.0, None

    def progress(self, round_id, plan, records):
        now = time.monotonic()
        if round_id == self._round and now - self._at < self.every_s:
            return
        last = records[-1]
        self.store.set_round_progress(round_id, {
            **{k: last[k] for k in ("step", "loss", "lr", "tokens_per_s", "grad_norm", "t")},
            "stage_steps": plan.stage_steps, "round_first": plan.stage_step_start, "round_steps": plan.num_steps,
            "global_step": plan.global_step_start - plan.stage_step_start + last["step"]})
        self._at, self._round = now, round_id
