"""SQLAlchemy 2 tables of the run store. Every schema change is an Alembic migration."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from store.records import RoundPlan, RoundResult


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec_yaml: Mapped[str] = mapped_column(Text)
    spec_json: Mapped[dict] = mapped_column(JSON)
    workdir: Mapped[str] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    """Controller driving the run (host:pid:nonce); None when no controller holds it."""
    lease_heartbeat: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    """Last heartbeat of the lease owner (UTC); a lease older than the TTL may be taken over."""
    ray_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Ray job of the controller that last drove the run (the dashboard's Jobs page lists it)."""

    stages: Mapped[list[Stage]] = relationship(back_populates="run", order_by="Stage.index")


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("run_id", "index", name="uq_stage_run_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    step_start: Mapped[int] = mapped_column(BigInteger)
    """Global step at which the stage starts."""
    total_steps: Mapped[int] = mapped_column(BigInteger)
    num_rounds: Mapped[int] = mapped_column(Integer)

    run: Mapped[Run] = relationship(back_populates="stages")


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("run_id", "stage_index", "round_index", "attempt", name="uq_round_attempt"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    stage_index: Mapped[int] = mapped_column(Integer)
    round_index: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), index=True)
    weights: Mapped[dict] = mapped_column(JSON)
    step_start: Mapped[int] = mapped_column(BigInteger)
    """Global step of the round's first step."""
    step_end: Mapped[int] = mapped_column(BigInteger)
    """Global step after the round's last step (exclusive)."""
    lr_segment: Mapped[dict] = mapped_column(JSON)
    """Schedule spec plus the stage-local step range this round covers."""
    init_checkpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    checkpoint_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    plan_json: Mapped[str] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    eval_losses: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Tokens the round trained on (64-bit: a round can pass 2^31)."""
    tokens_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    mixer_state: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    """Mixer state after proposing this round's weights (restored on resume)."""
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    progress: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    """Latest live record while the round runs: step, loss, LR, tokens/s, grad norm, time."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    @property
    def plan(self) -> RoundPlan:
        """The round's plan, typed (the one place plan_json is parsed)."""
        return RoundPlan.from_json(self.plan_json)

    @property
    def result(self) -> RoundResult | None:
        """The worker's result, typed, once the round finished (the one place result_json is parsed)."""
        return RoundResult.from_json(self.result_json) if self.result_json else None


class Event(Base):
    """Append-only log of state transitions (runs, stages, rounds)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Transition(Base):
    """One mixing decision and its outcome: what the Data Mixing Agent learns from.

    Written by every run (one per finished round, in the round's commit transaction) and by
    `cpt agent explore` trajectories (runs with a random mixer)."""

    __tablename__ = "transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), unique=True)
    stage_index: Mapped[int] = mapped_column(Integer)
    round_index: Mapped[int] = mapped_column(Integer)
    num_domains: Mapped[int] = mapped_column(Integer, index=True)
    domains: Mapped[list] = mapped_column(JSON)
    """Domain names in feature order: the stage's new domains, then its replay domains."""
    state: Mapped[list] = mapped_column(JSON)
    action: Mapped[list] = mapped_column(JSON)
    reward: Mapped[float] = mapped_column(Float)
    next_state: Mapped[list] = mapped_column(JSON)
    done: Mapped[bool] = mapped_column(Boolean)
    mixer: Mapped[str] = mapped_column(String(64))
    """Mixer that chose the action (dirichlet for exploration)."""
    feature_version: Mapped[str] = mapped_column(String(8), default="1", server_default="1", index=True)
    """Version of the state features (mixers/agent.py FEATURE_VERSION); agents train on one version."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Eval(Base):
    """One metric of one downstream evaluation (lm-evaluation-harness) of a committed round's
    checkpoint, or the evaluation's failure (metric and value None, error set)."""

    __tablename__ = "evals"
    __table_args__ = (UniqueConstraint("run_id", "stage_index", "round_index", "task", "metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    stage_index: Mapped[int] = mapped_column(Integer)
    round_index: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(200))
    """lm-eval's `metric,filter` (acc,none); "" for a failed evaluation."""
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    stderr: Mapped[float | None] = mapped_column(Float, nullable=True)
    samples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seconds: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    role: Mapped[str] = mapped_column(String(8), default="none", server_default="none")
    """The spec entry's role: source (forgetting), target (gain) or none; the agent's score reward reads it."""
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
