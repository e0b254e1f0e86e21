"""Typed configs of what a rank builds: the model, the optimizer, per-sample loss weighting (and
the LR schedules, in workers/schedules.py). The run spec embeds them and a RoundPlan carries
them; each validates itself (fields against each other) and builds its component.

No torch here: the controller and the CLI import these without paying for it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.schedules import SCHEDULES, ScheduleSpec

__all__ = ["SCHEDULES", "ModelConfig", "OptimizerConfig", "SampleLossConfig", "ScheduleSpec"]


class _Config(BaseModel):
    # NaN and inf are never valid numbers in a config (pydantic would otherwise accept "nan")
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)


class ModelConfig(_Config):
    """A Llama-style causal LM: built from scratch from these sizes, or loaded from `path`."""

    path: str | None = None
    """Local Hugging Face checkpoint folder (safetensors), or a cpt round checkpoint folder (then the
    sizes below must match it); None builds a new model from the sizes."""
    hidden_size: int = Field(128, gt=0, le=65536)
    """Width of the residual stream."""
    num_layers: int = Field(2, gt=0, le=1024)
    """Transformer blocks."""
    num_heads: int = Field(4, gt=0, le=1024)
    """Attention heads (hidden_size must divide by it)."""
    num_kv_heads: int | None = Field(None, gt=0, le=1024)
    """Key/value heads for grouped-query attention; None = num_heads."""
    intermediate_size: int = Field(352, gt=0, le=1 << 20)
    """Hidden width of the SwiGLU MLP."""
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

    def build(self, vocab_size: int, seq_len: int, seed: int):
        """The model: a seeded fresh init, or the checkpoint at `path` (safetensors only)."""
        from workers.model import build_model

        return build_model(self, vocab_size, seq_len, seed)


class OptimizerConfig(_Config):
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

    def build(self, model):
        """AdamW over the model's parameters (decay on matrices only); LR is set per step."""
        from workers.fabric import make_optimizer

        return make_optimizer(model, self)


class SampleLossConfig(_Config):
    """Instance-level loss re-weighting inside each batch (Sow et al. 2025)."""

    kind: Literal["uniform", "linupper", "quadratic", "extremes"] = "uniform"
    """uniform (plain mean), linupper (down-weight easy samples; recommended), quadratic (favour
    medium losses), extremes (favour both tails)."""
    r: float = Field(1.0, gt=0, le=1e6)
    """Softmax temperature: large r approaches uniform weights."""
    burn_in: int = Field(0, ge=0)
    """Stage steps of plain mean loss before re-weighting starts."""
