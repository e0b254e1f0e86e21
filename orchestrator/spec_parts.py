"""The parts of a run spec: stages (replay, buffers), checkpoints and tracking (resources are
store.configs.Resources, read by the worker group too).

`orchestrator.spec` composes them into a RunSpec and loads it from YAML; every field carries its
docstring (pydantic reads them as field descriptions, which `cpt validate` and the docs show).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, field_validator

from corpus.fs import scheme_problem
from mixers.base import MixerConfig, parse_mixer
from store.configs import Config, SampleLossConfig
from store.evals import is_task_path
from store.names import NAME_PATTERN
from store.schedules import Cosine, ScheduleSpec

MAX_STAGE_STEPS = 10_000_000  # a round's result holds a loss and an LR per step


class BufferSpec(Config):
    tokens: int = Field(gt=0, le=10**13)
    """Token budget of each domain's replay buffer (bounded memory/disk)."""
    policy: Literal["reservoir", "fifo"] = "reservoir"
    """reservoir: a uniform sample of everything trained on; fifo: the most recent sequences."""


class ReplaySpec(Config):
    fraction: float = Field(0.0, ge=0, lt=1)
    """Share of each batch drawn from earlier stages' domains (0.05 = 5% replay)."""
    sources: list[str] | None = None
    """Domains to replay; None = every domain trained in an earlier stage."""
    buffer: BufferSpec | None = None
    """Replay from bounded buffers of the sequences earlier stages trained on (domains named
    `replay/<domain>`), instead of sampling the full earlier domains."""


class StageSpec(Config):
    name: str = Field(pattern=NAME_PATTERN)
    """Stage name (shown in the CLI and MLflow); the name grammar of store/names.py."""
    domains: list[str] = Field(min_length=1)
    """Domains new in this stage (its training data besides replay)."""
    tokens: int = Field(gt=0, le=10**15)
    """Token budget of the stage (replay included): steps = tokens / (batch_size * seq_len)."""
    rounds: int = Field(1, gt=0, le=100_000)
    """Rounds the stage is split into; the mixer re-weights between rounds."""
    schedule: ScheduleSpec = Field(default_factory=Cosine)
    """LR schedule over the stage: re-warm at its start, re-decay within it."""
    mixer: SerializeAsAny[MixerConfig] = Field(default_factory=lambda: parse_mixer({"kind": "fixed_replay"}))
    """Mixer `{kind: NAME, ...params}`, validated into that mixer's typed config (`cpt mixers` lists
    them): a discriminated union over the mixer registry, so plugins join it by registering."""
    replay: ReplaySpec = Field(default_factory=ReplaySpec)
    """Replay of earlier stages' data."""
    reset_optimizer: bool = True
    """Start the stage with fresh AdamW state (as in Ibrahim et al. 2024)."""
    sample_loss: SampleLossConfig = Field(default_factory=SampleLossConfig)
    """Instance-level loss re-weighting inside each batch (Sow et al. 2025); uniform = plain mean."""
    max_epochs: dict[str, int] = Field(default_factory=dict)
    """Per domain (or `replay/<domain>` buffer): how many epochs of it the run may have read by the
    end of this stage (counted from the run's start; a domain is read without replacement, epoch
    after epoch). Checked at validation when the stage's draw is known (static weights, one
    domain), else before each round; absent = no limit."""

    @field_validator("max_epochs")
    @classmethod
    def _positive_epochs(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {d: n for d, n in v.items() if n < 1}
        if bad:
            raise ValueError(f"max_epochs must be >= 1, got {bad}")
        return v

    @field_validator("mixer", mode="before")
    @classmethod
    def _mixer(cls, v: Any) -> MixerConfig:
        return parse_mixer(v)


class CheckpointSpec(Config):
    """Which round checkpoints stay on disk (the store keeps every round's record either way)."""

    keep_last: int | None = Field(3, ge=1, le=1_000_000)
    """Keep the last K finished rounds' checkpoints (resume needs only the last); None keeps all."""
    keep_stage_ends: bool = True
    """Also keep each stage's last round (the model after each stage: what CPT users compare and export)."""
    uri: str | None = None
    """Where round checkpoints go: None = the run's folder under CPT_HOME; or a folder or a URI
    (`s3://bucket/prefix`, `gs://...`, `file:///shared/...`) every node reaches (each run writes
    under RUN_ID/; with an object-store URI the run's replay buffers go there too, under
    RUN_ID/replay/). With ranks on several nodes it must be storage they all reach: each rank
    writes its own part of a sharded checkpoint."""
    format: Literal["sharded", "full"] = "sharded"
    """sharded: every rank writes its part (torch.distributed.checkpoint), nothing is gathered, any
    number of workers resumes it; full: the whole state gathered to rank 0 and written by it (one
    safetensors file per model and optimizer, as cpt wrote before; fine for small models)."""
    asynchronous: bool = True
    """sharded only: copy the round's state to host memory and write it while the next round trains
    (the round commits once every shard is durable); off writes before the next round starts."""

    @field_validator("uri")
    @classmethod
    def _openable(cls, v: str | None) -> str | None:
        if v is not None and (why := scheme_problem(v)):
            raise ValueError(why)
        return v


# the tracking stores MLflow opens (its registry's schemes; a `+driver` suffix is allowed)
MLFLOW_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc",
                  "uc")


class TrackingSpec(Config):
    mlflow_uri: str | None = None
    """MLflow tracking URI (http(s):// server, sqlite:///, postgresql://, a folder, ...); None = a
    local SQLite store in CPT_HOME."""
    experiment: str = Field("cpt", pattern=NAME_PATTERN)
    """MLflow experiment name (the name grammar of store/names.py)."""
    log_every: int = Field(5, ge=1, le=100_000)
    """Steps between live metrics while a round runs (loss, LR, grad norm, per-domain loss,
    tokens/s, with each step's real time), logged to MLflow off the training loop."""

    @field_validator("mlflow_uri")
    @classmethod
    def _mlflow_store(cls, v: str | None) -> str | None:
        if v is not None and (why := scheme_problem(v, MLFLOW_SCHEMES)):
            raise ValueError(why)
        return v


class EvalResources(Config):
    cpus: float = Field(1.0, gt=0, le=1024)
    """CPUs of the Ray task that runs one evaluation (beside the training ranks)."""
    gpus: float = Field(0.0, ge=0, le=64)
    """GPUs of that task (0: it evaluates on CPU)."""


class EvalSpec(Config):
    """A downstream evaluation of committed rounds with lm-evaluation-harness (`pip install
    cpt[eval]`), in its own Ray task while the next round trains; it never fails the run."""

    task: str = Field(min_length=1, max_length=500)
    """An lm-eval task name (its data comes from the Hub: needs a network), or a folder of lm-eval
    task YAML files pointing at local data (relative to the spec's folder; every task it defines is
    evaluated)."""
    every: Literal["round", "stage"] = "round"
    """Evaluate every committed round, or each stage's last round."""
    limit: int | None = Field(None, gt=0, le=10_000_000)
    """Examples per task (None: all)."""
    num_fewshot: int = Field(0, ge=0, le=64)
    """Few-shot examples in each prompt."""
    role: Literal["source", "target", "none"] = "none"
    """What the score measures: the domain the model came from (forgetting) or the one it is
    continued on (gain); recorded with the scores."""
    resources: EvalResources = Field(default_factory=EvalResources)
    """The evaluation task's resources."""

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        if is_task_path(v):
            from pathlib import Path

            if not Path(v).is_dir():
                raise ValueError(f"{v}: not a folder of lm-eval task YAML files")
            if not any(Path(v).glob("*.yaml")):
                raise ValueError(f"{v}: holds no *.yaml task files")
        elif not all(c.isalnum() or c in "_-." for c in v):
            raise ValueError(f"{v!r}: not an lm-eval task name (letters, digits, _ - .) or a folder path")
        return v
