"""Typed configs of what the ranks build and run on: the model, the optimizer, per-sample loss
weighting and the worker group's resources (the LR schedules are in store/schedules.py).

The run spec embeds them, a RoundPlan carries them, the worker group is started from
`Resources`; each validates itself (fields against each other). They are plain data: the workers
build the components (workers/families.py, workers/fabric.py), so this module imports neither
torch nor anything above the store, and the CLI and the controller read them for free.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from store.names import NAME_PATTERN


class Config(BaseModel):
    """Base of every typed config and spec part: unknown fields are errors, fields carry docstrings."""

    # NaN and inf are never valid numbers in a config (pydantic would otherwise accept "nan")
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)


class ModelConfig(Config):
    """A causal LM: built from scratch from a family and these sizes, or loaded from `path`."""

    path: str | None = None
    """Local Hugging Face checkpoint folder (safetensors; its config.json names the family), or a
    cpt round checkpoint folder (then the family and sizes below must match it); None builds a new
    model from the family and sizes."""
    family: str = Field("llama", pattern=NAME_PATTERN)
    """Architecture of a model built from scratch (`cpt models` lists them: llama, qwen2, gpt_neox,
    gpt2); ignored with a Hugging Face `path`, whose config decides."""
    hidden_size: int = Field(128, gt=0, le=65536)
    """Width of the residual stream."""
    num_layers: int = Field(2, gt=0, le=1024)
    """Transformer blocks."""
    num_heads: int = Field(4, gt=0, le=1024)
    """Attention heads (hidden_size must divide by it)."""
    num_kv_heads: int | None = Field(None, gt=0, le=1024)
    """Key/value heads for grouped-query attention; None = num_heads (families without GQA need None)."""
    intermediate_size: int = Field(352, gt=0, le=1 << 20)
    """Hidden width of the MLP (SwiGLU in llama and qwen2, GELU in gpt_neox and gpt2)."""
    tie_embeddings: bool = True
    """Share input and output embeddings (saves parameters in tiny models)."""
    dtype: str = "float32"
    """Older spelling of the training precision: weights are float32 either way; bfloat16 is accepted
    only beside `resources.precision: bf16-mixed`, which is what decides."""

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_kv_heads and self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError("dtype must be float32 or bfloat16")
        return self


class OptimizerConfig(Config):
    """AdamW."""

    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas, each in [0, 1)."""
    weight_decay: float = Field(0.1, ge=0, le=1)
    """AdamW decoupled weight decay."""
    grad_clip: float = Field(1.0, ge=0, le=1e6)
    """Gradient norm clip (0 disables)."""
    eps: float = Field(1e-8, gt=0, le=1)
    """AdamW epsilon."""

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {list(v)}")
        return v


class SampleLossConfig(Config):
    """Instance-level loss re-weighting inside each batch (Sow et al. 2025)."""

    kind: Literal["uniform", "linupper", "quadratic", "extremes"] = "uniform"
    """uniform (plain mean), linupper (down-weight easy samples; recommended), quadratic (favour
    medium losses), extremes (favour both tails)."""
    r: float = Field(1.0, gt=0, le=1e6)
    """Softmax temperature: large r approaches uniform weights."""
    burn_in: int = Field(0, ge=0)
    """Stage steps of plain mean loss before re-weighting starts."""


class Resources(Config):
    """The run's worker group on Ray: N ranks (Ray Train), each with its CPUs/GPUs, DDP or FSDP.

    One place for every default: the spec, the worker group and each rank's Fabric read this."""

    workers: int = Field(1, ge=1, le=4096)
    """Ranks of the data-parallel worker group (one process each, on any nodes of the cluster).
    `workers: {min: A, max: B}` makes the group elastic: each group starts with the most ranks in
    [A, B] the cluster holds (and the global batch divides over), so a round whose node died is
    retried on the ranks left, and the next round after capacity returns scales back up."""
    min_workers: int | None = Field(None, ge=1, le=4096)
    """The elastic group's lower bound (from `workers: {min, max}`); None: always `workers` ranks."""
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
            if isinstance(data.get("workers"), dict):  # {min, max}: elastic
                bounds = dict(data["workers"])
                if set(bounds) != {"min", "max"}:
                    raise ValueError(f"workers: give an integer or {{min: A, max: B}}, got keys {sorted(bounds)}")
                if "min_workers" in data:
                    raise ValueError("give workers: {min, max} or min_workers, not both")
                data["workers"], data["min_workers"] = bounds["max"], bounds["min"]
            for old, new in (("cpus", "cpus_per_worker"), ("gpus", "gpus_per_worker")):
                if old in data:
                    if new in data:
                        raise ValueError(f"give {new} (per rank) or the older {old}, not both")
                    data[new] = data.pop(old)
        return data

    @model_validator(mode="after")
    def _fits(self) -> Resources:
        if self.min_workers is not None and self.min_workers > self.workers:
            raise ValueError(f"workers: min {self.min_workers} is above max {self.workers}")
        if self.precision == "bf16-mixed" and self.gpus_per_worker == 0:
            raise ValueError("precision bf16-mixed needs gpus_per_worker > 0 (on CPU use 32-true)")
        if self.strategy == "fsdp" and self.gpus_per_worker == 0:  # Lightning Fabric's FSDP is GPU-only
            raise ValueError("strategy fsdp needs gpus_per_worker > 0 (on CPU use ddp)")
        return self

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None and self.min_workers < self.workers

    def worker_counts(self) -> list[int]:
        """The group sizes this run may take, largest first (one unless elastic)."""
        low = self.min_workers if self.min_workers is not None else self.workers
        return list(range(self.workers, low - 1, -1))

    @property
    def uses_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def per_worker(self) -> dict[str, float]:
        """Ray resources of one rank."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.uses_gpu else {})}
