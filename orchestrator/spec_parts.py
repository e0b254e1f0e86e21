"""The parts of a run spec: stages (replay, buffers), resources, checkpoints and tracking.

`orchestrator.spec` composes them into a RunSpec and loads it from YAML; every field carries its
docstring (pydantic reads them as field descriptions, which `cpt validate` and the docs show).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from corpus.fs import scheme_problem
from mixers.base import MixerConfig, parse_mixer
from store.names import NAME_PATTERN
from workers.config import SampleLossConfig
from workers.schedules import Cosine, ScheduleSpec

MAX_STAGE_STEPS = 10_000_000  # a round's result holds a loss and an LR per step


class _M(BaseModel):
    # NaN and inf are never valid numbers in a spec (pydantic would otherwise accept "nan" as a float)
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)


class BufferSpec(_M):
    tokens: int = Field(gt=0, le=10**13)
    """Token budget of each domain's replay buffer (bounded memory/disk)."""
    policy: Literal["reservoir", "fifo"] = "reservoir"
    """reservoir: a uniform sample of everything trained on; fifo: the most recent sequences."""


class ReplaySpec(_M):
    fraction: float = Field(0.0, ge=0, lt=1)
    """Share of each batch drawn from earlier stages' domains (0.05 = 5% replay)."""
    sources: list[str] | None = None
    """Domains to replay; None = every domain trained in an earlier stage."""
    buffer: BufferSpec | None = None
    """Replay from bounded buffers of the sequences earlier stages trained on (domains named
    `replay/<domain>`), instead of sampling the full earlier domains."""


class StageSpec(_M):
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


class ResourceSpec(_M):
    """The run's worker group on Ray: N ranks (Ray Train), each with its CPUs/GPUs, DDP or FSDP."""

    workers: int = Field(1, ge=1, le=4096)
    """Ranks of the data-parallel worker group (one process each, on any nodes of the cluster)."""
    cpus_per_worker: float = Field(1, gt=0, le=1024)
    """CPUs per rank (Ray resources; also the rank's torch thread count)."""
    gpus_per_worker: float = Field(0, ge=0, le=64)
    """GPUs per rank; 0 trains on CPU (gloo), >0 on GPU (NCCL)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp: every rank holds the whole model; fsdp (GPUs only): parameters, gradients and optimizer
    state sharded."""
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    """Training precision (Lightning Fabric): bf16-mixed autocasts matmuls to bfloat16 (GPUs)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward: much less memory, ~30% more compute."""
    compile: bool = False
    """torch.compile the model (in place; checkpoints unchanged): faster steps after a compile warm-up."""
    placement: Literal["pack", "spread"] = "pack"
    """How ranks go onto nodes (Ray Train's placement strategy, best effort): pack fills a node
    before using the next (collectives stay on one host); spread puts each rank on a different node
    where there is room (more host memory and bandwidth per rank, fewer ranks lost with a node)."""
    wait_s: float = Field(0, ge=0, le=7 * 86400)
    """Seconds to wait for an autoscaling cluster to grow to the group's CPUs/GPUs (with a message
    while waiting); 0 fails at once, exit 2, naming the resource the cluster lacks."""
    max_attempts: int = Field(3, ge=1, le=100)
    """Attempts per round before the run fails (a retried round restarts from its plan on a new group)."""

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        # `cpus`/`gpus` were the single-worker names: still accepted, never together with the new ones
        if isinstance(data, dict):
            data = dict(data)
            for old, new in (("cpus", "cpus_per_worker"), ("gpus", "gpus_per_worker")):
                if old in data:
                    if new in data:
                        raise ValueError(f"give {new} (per rank) or the older {old}, not both")
                    data[new] = data.pop(old)
        return data

    @model_validator(mode="after")
    def _fits(self) -> ResourceSpec:
        if self.precision == "bf16-mixed" and self.gpus_per_worker == 0:
            raise ValueError("precision bf16-mixed needs gpus_per_worker > 0 (on CPU use 32-true)")
        if self.strategy == "fsdp" and self.gpus_per_worker == 0:  # Lightning Fabric's FSDP is GPU-only
            raise ValueError("strategy fsdp needs gpus_per_worker > 0 (on CPU use ddp)")
        return self


class CheckpointSpec(_M):
    """Which round checkpoints stay on disk (the store keeps every round's record either way)."""

    keep_last: int | None = Field(3, ge=1, le=1_000_000)
    """Keep the last K finished rounds' checkpoints (resume needs only the last); None keeps all."""
    keep_stage_ends: bool = True
    """Also keep each stage's last round (the model after each stage: what CPT users compare and export)."""
    uri: str | None = None
    """Where round checkpoints go: None = the run's folder under CPT_HOME; or a folder or a URI
    (`s3://bucket/prefix`, `gs://...`) shared by every node (each run writes under RUN_ID/; with a
    URI the run's replay buffers go there too, under RUN_ID/replay/)."""

    @field_validator("uri")
    @classmethod
    def _openable(cls, v: str | None) -> str | None:
        if v is not None and (why := scheme_problem(v)):
            raise ValueError(why)
        return v


# the tracking stores MLflow opens (its registry's schemes; a `+driver` suffix is allowed)
MLFLOW_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc",
                  "uc")


class TrackingSpec(_M):
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
