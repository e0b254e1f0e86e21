"""When a round counts: its commit, and the one round that may wait for its checkpoint.

A round's result comes back when its ranks are done with it; with asynchronous checkpoints its
checkpoint is then still being written while the next round trains. Such a round is *pending*:
the next round is planned from its result (cursors, losses, the mixer's view), but it commits
(store row, mixing transition, retention, callbacks) only once the ranks report the write durable.
At most one round is pending (the ranks finish one write before they start the next); a stage's
end and the run's end wait for it. A pending round whose write is lost (the group died, the run
stopped) is failed in the store and re-runs: the store never points at a half-written checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from mixers.base import Observation
from orchestrator import checkpoints
from orchestrator.callbacks import RoundCallback
from orchestrator.planner import Finished, RoundPlanner
from orchestrator.spec import RunSpec
from store.errors import TrainingError
from store.records import RoundPlan, RoundResult
from store.runs import RunStore


class WriteLost(Exception):
    """A round's asynchronous checkpoint never became durable: the stage re-runs from its last commit."""


@dataclasses.dataclass(frozen=True)
class Pending:
    """A round whose result is in; everything its commit needs."""

    round_id: int
    plan: RoundPlan
    result: RoundResult
    obs: Observation
    weights: dict[str, float]
    mixer: str
    mixer_state: dict
    seq: int
    """The plan's sequence number in the worker group's mailbox (what its write is reported under)."""

    def finished(self) -> Finished:
        return Finished(self.plan.stage_index, self.plan.round_index, self.weights, self.result.eval_losses,
                        self.result.checkpoint, self.plan, self.result, self.mixer_state)


class Commits:
    """The run's commits, in round order."""

    def __init__(self, store: RunStore, spec: RunSpec, workdir: Path, run_id: str, planner: RoundPlanner,
                 callbacks: list[RoundCallback], message: Callable[[str], None], after: Callable[[], None],
                 protected: Callable[[], set[tuple[int, int, int]]] = set):
        self.store, self.spec, self.workdir, self.run_id = store, spec, workdir, run_id
        self.planner, self.callbacks, self.message, self.after = planner, callbacks, message, after
        self.protected = protected  # checkpoints retention must keep (an evaluation reads them)
        self.pending: Pending | None = None
        self._committed: list[Finished] | None = None

    def committed(self) -> list[Finished]:
        """The committed rounds in order: read from the store once (a resume), then appended at each
        commit (the controller holds the run's lease: nobody else commits its rounds), so a round
        boundary does not re-read and re-parse every earlier round's result."""
        if self._committed is None:
            self._committed = [Finished.from_row(x) for x in self.store.rounds(self.run_id, status="finished")]
        return list(self._committed)

    def done(self) -> list[Finished]:
        """What the next round starts from: the committed rounds, and the pending one."""
        return self.committed() + ([self.pending.finished()] if self.pending else [])

    def add(self, p: Pending) -> None:
        """A round's result: committed now, or held until its checkpoint is durable."""
        if p.result.checkpoint_pending:
            self.pending = p
        else:
            self._commit(p)

    def settle(self, saved: tuple[float | None, str | None]) -> None:
        """The pending round's write is over: commit it, or fail the run with the write's error."""
        p, (write_s, error) = self.pending, saved
        self.pending = None
        if error is not None:
            self.store.fail_round(p.round_id, f"checkpoint write failed: {error}"[:4000])
            raise TrainingError(f"stage {p.plan.stage_index} round {p.plan.round_index}: checkpoint write failed: "
                                f"{error[:500]}")
        result = dataclasses.replace(p.result, checkpoint_pending=False, checkpoint_write_s=write_s)
        self._commit(dataclasses.replace(p, result=result))

    def drain(self, poll: Callable[[int], tuple | None]) -> None:
        """Wait for the pending round's write (`poll(seq)` answers (write seconds, error) or None
        for not yet, or raises when the group is gone) and commit it."""
        while self.pending is not None:
            saved = poll(self.pending.seq)
            if saved is not None:
                self.settle(saved)

    def lose(self, why: str) -> None:
        """The pending round's write will never be durable: failed in the store, it re-runs."""
        if self.pending is not None:
            self.store.fail_round(self.pending.round_id, why)
            self.pending = None

    def _commit(self, p: Pending) -> None:
        """The commit point, then retention and the callbacks."""
        self.store.finish_round(p.round_id, p.result, self.planner.commit(p.obs, p.weights, p.result, p.mixer))
        if self._committed is not None:  # as a resume would read it back: the mixer state a JSON snapshot
            done = p.finished()
            self._committed.append(dataclasses.replace(done, mixer_state=json.loads(json.dumps(done.mixer_state))))
        self.after()
        keys = None if self._committed is None else [(x.stage_index, x.round_index, x.plan.attempt)
                                                      for x in self._committed]
        checkpoints.prune(self.store, self.spec, self.workdir, self.run_id, self.message, keys, self.protected())
        for cb in self.callbacks:
            cb.round_finished(p.round_id, p.plan, p.result)
