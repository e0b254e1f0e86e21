"""The run-store API. Every state change is one transaction, and writes its event row with it.

State machines (persisted before the side effect they announce):
  run:   pending -> running -> finished | failed | cancelled | interrupted (SIGTERM: resumable);
         failed/cancelled/interrupted/running -> running (resume, under the run lease)
  round: planned -> running -> finished | failed | cancelled
"""

from __future__ import annotations

import copy
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from store.db import ensure_schema, is_lock_wait, locked, make_engine, store_timeout_s
from store.errors import InvalidTransition, LeaseLost, NotFound
from store.lease import lease_state
from store.models import Event, Round, Run, Stage, Transition, utcnow
from store.secrets import redact

if TYPE_CHECKING:  # the contract's types only: the store saves their JSON and depends on nothing above it
    from store.records import RoundPlan, RoundResult

RUN_TRANSITIONS = {
    "pending": {"running", "cancelled", "failed"},
    "running": {"running", "finished", "failed", "cancelled", "interrupted"},
    "failed": {"running"},
    "cancelled": {"running"},
    "interrupted": {"running", "cancelled"},
    "finished": set(),
}
ROUND_TRANSITIONS = {
    "planned": {"running", "cancelled", "failed"},
    "running": {"finished", "failed", "cancelled"},
    "finished": set(),
    "failed": set(),
    "cancelled": set(),
}
T = TypeVar("T")
GONE = "interrupted (controller gone)"


class RunStore:
    """Repository over the run store. Safe to use from several processes (SQLite WAL + busy wait)."""

    def __init__(self, url: str, migrate: bool = True):
        self.url = url
        self.engine = make_engine(url)
        if migrate:
            ensure_schema(self.engine, url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._fence: list[str | None] | None = None  # [run id, lease owner] of a controller's store

    def fenced(self, run_id: str) -> RunStore:
        """This store (same engine) for the controller of `run_id`: once `arm(owner)` is called (the
        lease taken), every write transaction first checks, inside that transaction, that the lease
        is still ours, and raises LeaseLost otherwise (on PostgreSQL the check also locks the run
        row until commit, so a take-over waits for the write in flight and none can follow it)."""
        other = copy.copy(self)
        other._fence = [run_id, None]
        return other

    def arm(self, owner: str) -> None:
        """Fence this controller's store to the lease `owner` now holds (see `fenced`)."""
        assert self._fence is not None, "arm() is for a store made by fenced()"
        self._fence[1] = owner

    def db_now(self, s: Session) -> datetime:
        """The database's clock (naive UTC): what lease heartbeats are stamped and judged with."""
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return datetime.fromisoformat(s.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar())
        if dialect == "postgresql":
            return s.execute(text("SELECT timezone('UTC', clock_timestamp())")).scalar()
        return utcnow()

    @staticmethod
    def _get(s: Session, model, key, what: str):
        row = s.get(model, key)
        if row is None:
            raise NotFound(f"no {what} {key!r} in the store")
        return row

    @staticmethod
    def _move(s: Session, row, table: dict[str, set[str]], status: str, entity: str, message: str | None) -> None:
        """Check a state-machine transition and log it as an event, in the caller's transaction."""
        if status not in table[row.status]:
            raise InvalidTransition(f"{entity} {row.id}: cannot go from {row.status} to {status}")
        s.add(Event(run_id=row.run_id if entity == "round" else row.id, entity=entity, entity_id=str(row.id),
                    from_state=row.status, to_state=status, message=message))
        row.status = status

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            if self._fence is not None and self._fence[1] is not None:
                run_id, owner = self._fence
                held = session.execute(update(Run).where(Run.id == run_id, Run.lease_owner == owner)
                                       .values(lease_owner=owner)).rowcount
                if held != 1:
                    raise LeaseLost(f"run {run_id}: another controller took the lease over; this one stops "
                                    f"without writing")
            yield session

    def _retry(self, fn: Callable[[], T]) -> T:
        # busy_timeout covers most contention; this covers the rest (e.g. WAL checkpoints), within
        # the same bound: a store locked for longer is a clear StoreBusy (exit 2), not a traceback.
        deadline = time.monotonic() + store_timeout_s()
        for i in itertools.count():
            try:
                return fn()
            except OperationalError as exc:
                if not is_lock_wait(exc):
                    raise
                # a server's lock timeout has already waited the whole bound
                if time.monotonic() >= deadline or "timeout" in str(exc).lower():
                    raise locked(self.url) from None
                time.sleep(min(0.05 * 2**i, 1.0))
        raise AssertionError("unreachable")

    # ---- runs -------------------------------------------------------------------------------
    def create_run(self, name: str, spec_yaml: str, spec_json: dict, workdir_root: str,
                   stages: list[tuple[str, int, int, int]]) -> str:
        """Record a new run (pending) with its stages: (name, step_start, total_steps, rounds)."""
        run_id = f"{name[:20]}-{uuid.uuid4().hex[:8]}"

        def do() -> str:
            with self._tx() as s:
                s.add(Run(id=run_id, name=name, status="pending", spec_yaml=spec_yaml, spec_json=spec_json,
                          workdir=f"{workdir_root}/{run_id}", cancel_requested=False))
                s.flush()
                for i, (sname, start, total, rounds) in enumerate(stages):
                    s.add(Stage(run_id=run_id, index=i, name=sname, status="pending", step_start=start,
                                total_steps=total, num_rounds=rounds))
                s.add(Event(run_id=run_id, entity="run", entity_id=run_id, to_state="pending"))
            return run_id

        return self._retry(do)

    def get_run(self, run_id: str) -> Run:
        with self._sessions() as s:
            return self._get(s, Run, run_id, "run")

    def list_runs(self, limit: int = 50) -> list[Run]:
        with self._sessions() as s:
            return list(s.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit)))

    def set_run_status(self, run_id: str, status: str, error: str | None = None,
                       message: str | None = None) -> None:
        def do() -> None:
            with self._tx() as s:
                run = self._get(s, Run, run_id, "run")
                self._move(s, run, RUN_TRANSITIONS, status, "run", redact(message or error or "") or None)
                run.error = None if error is None else redact(error)
                if status == "running":
                    run.cancel_requested = False

        self._retry(do)

    def update_run(self, run_id: str, **fields) -> None:
        """Non-state fields (mlflow_run_id, ray_job_id)."""
        def do() -> None:
            with self._tx() as s:
                run = self._get(s, Run, run_id, "run")
                for k, v in fields.items():
                    setattr(run, k, v)

        self._retry(do)

    def add_event(self, run_id: str, message: str) -> None:
        """A note in the run's event log that is not a state change (e.g. a resize before a resume)."""
        def do() -> None:
            with self._tx() as s:
                run = self._get(s, Run, run_id, "run")
                s.add(Event(run_id=run_id, entity="run", entity_id=run_id, from_state=run.status,
                            to_state=run.status, message=redact(message)))

        self._retry(do)

    def shown_status(self, run: Run) -> str:
        """A run's status as users should read it: a row that says `running` whose controller is
        gone (no live lease: SIGKILL, SIGHUP, a full disk, a lost node) is `interrupted (controller
        gone)`, resumable, not a run that looks alive forever."""
        if run.status != "running":
            return run.status
        with self._sessions() as s:
            live = lease_state(run, self.db_now(s)) == "live"
        return "running" if live else GONE

    def request_cancel(self, run_id: str) -> str:
        """Ask a running run to stop; a run that is not running, or whose controller is dead
        (no live lease holder), is cancelled at once."""
        def do() -> str:
            with self._tx() as s:
                run = self._get(s, Run, run_id, "run")
                if run.status == "running" and lease_state(run, self.db_now(s)) == "live":
                    run.cancel_requested = True
                    s.add(Event(run_id=run_id, entity="run", entity_id=run_id, from_state="running",
                                to_state="running", message="cancel requested"))
                    return "requested"
                if "cancelled" in RUN_TRANSITIONS[run.status]:
                    dead = run.status == "running"
                    s.add(Event(run_id=run_id, entity="run", entity_id=run_id, from_state=run.status,
                                to_state="cancelled", message="controller gone" if dead else None))
                    run.status = "cancelled"
                    run.lease_owner = run.lease_heartbeat = None
                    return "cancelled"
                return run.status

        outcome = self._retry(do)
        if outcome == "cancelled":
            self.abandon_open_rounds(run_id, "cancelled: run cancelled", status="cancelled")
        return outcome

    def cancel_requested(self, run_id: str) -> bool:
        with self._sessions() as s:
            run = s.get(Run, run_id)
            return bool(run and run.cancel_requested)

    # ---- stages -----------------------------------------------------------------------------
    def stages(self, run_id: str) -> list[Stage]:
        with self._sessions() as s:
            return list(s.scalars(select(Stage).where(Stage.run_id == run_id).order_by(Stage.index)))

    def set_stage_status(self, run_id: str, index: int, status: str) -> None:
        def do() -> None:
            with self._tx() as s:
                stage = s.scalars(select(Stage).where(Stage.run_id == run_id, Stage.index == index)).one()
                if stage.status != status:
                    s.add(Event(run_id=run_id, entity="stage", entity_id=str(stage.id),
                                from_state=stage.status, to_state=status))
                    stage.status = status

        self._retry(do)

    # ---- rounds -----------------------------------------------------------------------------
    def plan_round(self, plan: RoundPlan, lr_segment: dict, mixer_state: dict | None) -> int:
        """Persist a planned round (the plan is durable before any work starts)."""
        def do() -> int:
            with self._tx() as s:
                r = Round(run_id=plan.run_id, stage_index=plan.stage_index, round_index=plan.round_index,
                          attempt=plan.attempt, status="planned", weights=plan.weights,
                          step_start=plan.global_step_start,
                          step_end=plan.global_step_start + plan.num_steps, lr_segment=lr_segment,
                          init_checkpoint=plan.init_checkpoint, plan_json=plan.to_json(),
                          mixer_state=mixer_state)
                s.add(r)
                s.flush()
                s.add(Event(run_id=plan.run_id, entity="round", entity_id=str(r.id), to_state="planned",
                            message=f"stage {plan.stage_index} round {plan.round_index} attempt {plan.attempt}"))
                return r.id

        return self._retry(do)

    def _round_transition(self, round_id: int, status: str, message: str | None = None,
                          _transition: dict | None = None, **fields) -> None:
        def do() -> None:
            with self._tx() as s:
                r = self._get(s, Round, round_id, "round")
                self._move(s, r, ROUND_TRANSITIONS, status, "round", message)
                for k, v in fields.items():
                    setattr(r, k, v)
                if _transition is not None:
                    s.add(Transition(run_id=r.run_id, round_id=round_id, stage_index=r.stage_index,
                                     round_index=r.round_index, **_transition))

        self._retry(do)

    def start_round(self, round_id: int) -> None:
        self._round_transition(round_id, "running")

    def finish_round(self, round_id: int, result: RoundResult, transition: dict | None = None) -> None:
        """The commit point: after this the round counts, and its checkpoint is the latest.

        The round's mixing transition (for the Data Mixing Agent) commits in the same transaction,
        so it exists exactly once per finished round."""
        mean_loss = sum(result.train_losses) / max(len(result.train_losses), 1)
        self._round_transition(round_id, "finished", _transition=transition, checkpoint_uri=result.checkpoint,
                               result_json=result.to_json(), eval_losses=result.eval_losses,
                               train_loss=mean_loss, tokens=result.tokens, tokens_per_s=result.tokens_per_s)

    def transitions(self, num_domains: int | None = None, exclude_runs: list[str] | None = None,
                    feature_version: str | None = None, runs: list[str] | None = None) -> list[Transition]:
        with self._sessions() as s:
            q = select(Transition).order_by(Transition.id)
            if feature_version is not None:
                q = q.where(Transition.feature_version == feature_version)
            if runs is not None:
                q = q.where(Transition.run_id.in_(runs))
            if num_domains is not None:
                q = q.where(Transition.num_domains == num_domains)
            if exclude_runs:
                q = q.where(Transition.run_id.not_in(exclude_runs))
            return list(s.scalars(q))

    def fail_round(self, round_id: int, error: str, status: str = "failed") -> None:
        error = redact(error)  # stored errors are shown by `cpt runs show` and may go anywhere
        self._round_transition(round_id, status, message=error[:500], error=error)

    def set_round_progress(self, round_id: int, progress: dict) -> None:
        """The latest live record of a running round (no event: progress is not a state change)."""
        def do() -> None:
            with self._tx() as s:
                self._get(s, Round, round_id, "round").progress = progress

        self._retry(do)

    def set_round_mlflow(self, round_id: int, mlflow_run_id: str) -> None:
        def do() -> None:
            with self._tx() as s:
                s.get(Round, round_id).mlflow_run_id = mlflow_run_id

        self._retry(do)

    def rounds(self, run_id: str, status: str | None = None, light: bool = False) -> list[Round]:
        """A run's round attempts in order. `light`: plain rows of the small columns only (no plan,
        result, LR segment, mixer state or progress, and no ORM objects): what a redraw of a long
        run's curves reads, thousands of rows in milliseconds."""
        with self._sessions() as s:
            cols = (Round,) if not light else (
                Round.id, Round.stage_index, Round.round_index, Round.attempt, Round.status, Round.weights,
                Round.eval_losses, Round.tokens, Round.step_start, Round.step_end, Round.train_loss,
                Round.tokens_per_s, Round.checkpoint_uri, Round.mlflow_run_id)
            q = select(*cols).where(Round.run_id == run_id)
            if status:
                q = q.where(Round.status == status)
            q = q.order_by(Round.stage_index, Round.round_index, Round.attempt)
            return list(s.scalars(q)) if not light else list(s.execute(q))

    def finished_keys(self, run_id: str) -> list[tuple[int, int, int]]:
        """(stage, round, attempt) of the run's finished rounds, in order: plain tuples, no row
        objects (what retention reads after every commit)."""
        with self._sessions() as s:
            q = (select(Round.stage_index, Round.round_index, Round.attempt)
                 .where(Round.run_id == run_id, Round.status == "finished")
                 .order_by(Round.stage_index, Round.round_index, Round.attempt))
            return [tuple(row) for row in s.execute(q)]

    def unlogged_rounds(self, run_id: str) -> list[Round]:
        """Finished rounds that MLflow has not taken yet (an outage; a resume), in order."""
        with self._sessions() as s:
            q = select(Round).where(Round.run_id == run_id, Round.status == "finished", Round.mlflow_run_id.is_(None))
            return list(s.scalars(q.order_by(Round.stage_index, Round.round_index, Round.attempt)))

    def finished_round(self, run_id: str, stage_index: int, round_index: int) -> Round | None:
        with self._sessions() as s:
            return s.scalars(select(Round).where(
                Round.run_id == run_id, Round.stage_index == stage_index,
                Round.round_index == round_index, Round.status == "finished")).first()

    def next_attempt(self, run_id: str, stage_index: int, round_index: int) -> int:
        with self._sessions() as s:
            attempts = s.scalars(select(Round.attempt).where(
                Round.run_id == run_id, Round.stage_index == stage_index, Round.round_index == round_index))
            return max(attempts, default=0) + 1

    def abandon_open_rounds(self, run_id: str, reason: str, status: str = "failed") -> int:
        """Mark rounds left planned/running by a dead controller as failed (resume starts afresh)."""
        n = 0
        for r in self.rounds(run_id):
            if r.status in ("planned", "running"):
                self.fail_round(r.id, reason, status=status)
                n += 1
        return n

    def events(self, run_id: str) -> list[Event]:
        with self._sessions() as s:
            return list(s.scalars(select(Event).where(Event.run_id == run_id).order_by(Event.id)))
