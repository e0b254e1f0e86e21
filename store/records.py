"""RoundPlan / RoundResult: the contract between the controller and a worker.

Frozen dataclasses, JSON round-trippable, persisted in the round row. A worker needs nothing
but the plan to do its work, so a round re-run from its stored plan reproduces it. The plan
carries typed configs (store/configs.py, store/schedules.py: model, optimizer, schedule, per-sample loss), checked
when the plan is made and again when it is read back; the rank builds its components from them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pydantic import BaseModel, TypeAdapter

from store.configs import ModelConfig, OptimizerConfig, SampleLossConfig
from store.schedules import ScheduleSpec

_SCHEDULE = TypeAdapter(ScheduleSpec)


@dataclass(frozen=True)
class RoundPlan:
    run_id: str
    """Run this round belongs to."""
    stage_index: int
    """0-based stage index."""
    round_index: int
    """0-based round index within the stage."""
    attempt: int
    """1-based attempt number; a retried round gets a new attempt."""
    seed: int
    """Run seed; data order is a pure function of (seed, cursors, weights, stage, round)."""
    weights: dict[str, float]
    """Mixture weight per domain for this round (non-negative, sums to 1)."""
    domain_paths: dict[str, str]
    """Shard folder of every domain the round trains on or evaluates."""
    eval_domains: list[str]
    """Domains whose validation loss is measured at the end of the round."""
    stage_step_start: int
    """First step of this round, counted from the start of its stage."""
    num_steps: int
    """Optimizer steps this round runs."""
    stage_steps: int
    """Total steps of the stage (the LR schedule spans these)."""
    global_step_start: int
    """First step of this round counted from the start of the run (for logging)."""
    schedule: ScheduleSpec
    """The stage's LR schedule (store/schedules.py): `schedule.lr(step, stage_steps)`."""
    model: ModelConfig
    """Model config (architecture from scratch, or a local HF checkpoint dir)."""
    tokenizer_hash: str
    """Hash every domain's manifest must carry."""
    vocab_size: int
    """Tokenizer vocabulary size (embedding rows)."""
    seq_len: int
    """Tokens per training sequence."""
    batch_size: int
    """Sequences per optimizer step."""
    optimizer: OptimizerConfig
    """AdamW settings: betas, weight_decay, eps, grad_clip."""
    init_checkpoint: str | None
    """Checkpoint to start from; None starts from the model spec."""
    load_optimizer: bool
    """Restore optimizer state from init_checkpoint (False at a stage start with reset)."""
    checkpoint_dir: str
    """Where the round writes its checkpoint (atomically)."""
    eval_batches: int
    """Validation batches per domain."""
    eval_before: bool = False
    """Also evaluate before training (first round of a run: the 'before' losses)."""
    sample_loss: SampleLossConfig = field(default_factory=SampleLossConfig)
    """Per-sample loss re-weighting (kind uniform: plain mean)."""
    micro_batch_size: int | None = None
    """Sequences per rank per forward/backward; the rank's slice of a step is accumulated in
    micro-batches of this size. None = the whole slice at once."""
    cursors: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per domain `{epoch, pos, data}`: where the round starts reading it (corpus.order). Every
    domain the run has read so far, so the result's cursors carry the ones this round skips."""
    log_every: int = 5
    """Steps between live metric reports while the round runs (tracking.log_every)."""
    checkpoint_format: str = "full"
    """sharded (each rank writes its part, any world size reads it) or full (rank 0 writes the
    gathered state); a plan stored before the sharded format existed reads back as full."""
    checkpoint_async: bool = False
    """Write the sharded checkpoint from host memory while the next round trains (the round
    commits once it is durable)."""

    def __post_init__(self) -> None:
        # plain dicts (a stored plan, a test) become the typed configs, validated
        for name, parse in (("schedule", _SCHEDULE.validate_python), ("model", ModelConfig.model_validate),
                            ("optimizer", OptimizerConfig.model_validate),
                            ("sample_loss", lambda v: SampleLossConfig.model_validate(v or {}))):
            value = getattr(self, name)
            if not isinstance(value, BaseModel):
                object.__setattr__(self, name, parse(value))

    def to_json(self) -> str:
        return json.dumps({f.name: _plain(getattr(self, f.name)) for f in fields(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RoundPlan:
        return cls(**_known(cls, json.loads(text)))


@dataclass(frozen=True)
class RoundResult:
    checkpoint: str
    """Directory of the checkpoint the round wrote."""
    eval_losses: dict[str, float]
    """Validation loss per domain at the end of the round."""
    eval_before: dict[str, float] | None
    """Validation loss per domain before training (only if the plan asked)."""
    train_losses: list[float]
    """Mean training loss at each step of the round."""
    domain_train_losses: dict[str, float]
    """Mean training loss per domain over the round."""
    lrs: list[float]
    """Learning rate used at each step."""
    tokens: int
    """Tokens trained on."""
    domain_tokens: dict[str, int]
    """Tokens trained on, per domain."""
    tokens_per_s: float
    """Training throughput (fit only, excluding eval and checkpointing)."""
    wall_s: float
    """Wall time of the whole round in the worker."""
    domain_loss_trace: dict[str, list[float | None]] = field(default_factory=dict)
    """Per-domain mean training loss at each step (None where the domain was not drawn)."""
    workers: int = 1
    """Ranks of the worker group that trained the round."""
    fit_s: float | None = None
    """Seconds of the training steps alone (no setup, eval or checkpoint)."""
    eval_s: float | None = None
    """Seconds spent on the end-of-round per-domain evaluation."""
    save_s: float | None = None
    """Seconds spent gathering and writing the round's checkpoint."""
    round_s: float | None = None
    """Controller-side seconds from handing the plan to the group to receiving this result (a group
    start, setup, eval and checkpoint included): round_s - fit_s is the round's overhead."""
    mfu: float | None = None
    """Model FLOPs utilisation of the fit (6 * params * tokens/s over the devices' peak); None on CPU."""
    cursors: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per domain `{epoch, pos, data}` after the round: the next round's start cursors."""
    grad_norms: list[float] = field(default_factory=list)
    """Global gradient norm at each step (before clipping)."""
    step_times: list[float] = field(default_factory=list)
    """Wall-clock time (Unix seconds) at the end of each step: the timestamps of its metrics."""
    started_at: float | None = None
    """Unix time the round started on the workers."""
    ended_at: float | None = None
    """Unix time the round's result was ready (its checkpoint written, or staged when asynchronous)."""
    checkpoint_pending: bool = False
    """The checkpoint is still being written (asynchronously): the round commits once it is durable."""
    checkpoint_stall_s: float | None = None
    """Seconds the ranks did not train because of the checkpoint (the whole write when synchronous;
    the copy to host memory when asynchronous)."""
    checkpoint_write_s: float | None = None
    """Seconds the checkpoint took to write (beside the next round's training when asynchronous)."""
    peak_mem_gb: float | None = None
    """Rank 0's peak GPU memory in the round (GB, what PyTorch's allocator handed out); None on CPU."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RoundResult:
        return cls(**_known(cls, json.loads(text)))


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _known(cls, data: dict[str, Any]) -> dict[str, Any]:
    """Only the fields this version knows: records written by older versions stay readable."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
