"""LR schedules as pure functions of the step within a stage.

Each stage re-warms from 0 and re-decays over its own steps (Ibrahim et al. 2024); the
'infinite' schedule instead cools down once to a constant LR that later stages continue at.
Warmup follows transformers' convention (lr = peak * t / W, so step 0 trains at 0), which lets
the tests compare against transformers' own schedule functions.
Every schedule checks its fields against each other (min_lr <= const_lr <= peak_lr, phase
fractions that fit in the stage); a decaying schedule takes `min_lr` or `min_lr_ratio` (the
paper's 0.1 x peak).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Sched(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True, allow_inf_nan=False)

    peak_lr: float = Field(3e-3, gt=0, le=1)
    """LR at the end of warmup (the re-warm target)."""
    warmup: float = Field(0.01, ge=0, lt=1)
    """Warmup length as a fraction of the stage's steps."""

    def warmup_steps(self, total: int) -> int:
        return int(round(self.warmup * total))

    def lr(self, step: int, total: int) -> float:
        """LR at `step` (0-based, within the stage) of a stage of `total` steps (pure: `lr_at`)."""
        return lr_at(self, step, total)


class _Decaying(_Sched):
    min_lr: float = Field(3e-4, ge=0)
    """LR at the last step of the stage (0.1 x peak in Ibrahim et al. 2024)."""
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    """min_lr as a fraction of peak_lr (0.1 = the paper's choice); give this or min_lr."""

    @model_validator(mode="before")
    @classmethod
    def _from_ratio(cls, data):
        if isinstance(data, dict) and data.get("min_lr_ratio") is not None:
            peak = data.get("peak_lr", cls.model_fields["peak_lr"].default)
            derived = data["min_lr_ratio"] * peak
            if "min_lr" in data and not math.isclose(data["min_lr"], derived, rel_tol=1e-9, abs_tol=1e-15):
                raise ValueError("give min_lr or min_lr_ratio, not both")
            data = {**data, "min_lr": derived}
        return data

    @model_validator(mode="after")
    def _order(self):
        if self.min_lr > self.peak_lr:
            raise ValueError(f"min_lr {self.min_lr:g} must not exceed peak_lr {self.peak_lr:g}")
        return self


class Cosine(_Decaying):
    """Linear warmup, then cosine decay to min_lr over the rest of the stage."""

    kind: Literal["cosine"] = "cosine"
    """Selects this schedule: `schedule: {kind: cosine, ...}` in a stage."""


class Linear(_Decaying):
    """Linear warmup, then linear decay to min_lr (Defazio et al. 2023)."""

    kind: Literal["linear"] = "linear"
    """Selects this schedule: `schedule: {kind: linear, ...}` in a stage."""


class WSD(_Decaying):
    """Warmup-stable-decay (MiniCPM): constant at peak, then a short decay at the end."""

    kind: Literal["wsd"] = "wsd"
    """Selects this schedule: `schedule: {kind: wsd, ...}` in a stage."""
    decay: float = Field(0.1, gt=0, le=1)
    """Decay length as a fraction of the stage's steps (10% suffices per MiniCPM)."""
    shape: Literal["exp", "1-sqrt", "linear", "cosine"] = "1-sqrt"
    """Decay shape: exponential interpolation to min_lr, 1-sqrt (Haegele et al. 2024), linear, cosine."""

    @model_validator(mode="after")
    def _check(self) -> WSD:
        if self.shape == "exp" and self.min_lr <= 0:
            raise ValueError("min_lr must be > 0 for the exponential decay shape")
        if self.warmup + self.decay > 1:
            raise ValueError("warmup + decay must not exceed 1")
        return self


class Infinite(_Decaying):
    """Infinite schedule: warmup, cooldown to const_lr, constant, exponential anneal to min_lr."""

    kind: Literal["infinite"] = "infinite"
    """Selects this schedule: `schedule: {kind: infinite, ...}` in a stage."""
    const_lr: float = Field(1.65e-3, gt=0)
    """The constant LR later stages can continue at without re-warming."""
    min_lr: float = Field(3e-4, gt=0)
    """LR at the end of the anneal (must be > 0: the anneal is exponential)."""
    cooldown: float = Field(0.6, ge=0, le=1)
    """Cooldown length (peak -> const_lr) as a fraction of the stage's steps."""
    constant: float = Field(0.3, ge=0, le=1)
    """Constant-phase length as a fraction; the anneal takes what is left."""
    cooldown_shape: Literal["cosine", "inv_sqrt"] = "cosine"
    """Cooldown shape (gpt-neox infinite_cosine / infinite_inv_sqrt)."""
    timescale: float = Field(1.0, gt=0)
    """alpha of the inverse-sqrt cooldown; larger drops faster early."""
    resume_const: bool = False
    """Continue from the previous stage's constant LR: no warmup, no cooldown, the stage starts at
    const_lr (the previous stage must be `infinite`, end in its constant phase and have the same
    const_lr; checked at validation)."""

    @model_validator(mode="before")
    @classmethod
    def _resume(cls, data):
        if isinstance(data, dict) and data.get("resume_const"):
            for phase in ("warmup", "cooldown"):
                if data.get(phase):
                    raise ValueError(f"resume_const starts the stage at const_lr: {phase} must be 0")
            data = {**data, "warmup": 0.0, "cooldown": 0.0}
        return data

    @model_validator(mode="after")
    def _check(self) -> Infinite:
        if self.warmup + self.cooldown + self.constant > 1 + 1e-9:
            raise ValueError("warmup + cooldown + constant must not exceed 1")
        if not self.min_lr <= self.const_lr <= self.peak_lr:
            raise ValueError(f"need min_lr <= const_lr <= peak_lr, got {self.min_lr:g}, {self.const_lr:g}, "
                             f"{self.peak_lr:g}")
        return self


class Constant(_Sched):
    """Optional warmup, then a constant LR (e.g. continuing at a small LR without re-warm)."""

    kind: Literal["constant"] = "constant"
    """Selects this schedule: `schedule: {kind: constant, ...}` in a stage."""
    warmup: float = Field(0.0, ge=0, lt=1)
    """Warmup length as a fraction of the stage's steps (0: no re-warm)."""


ScheduleSpec = Annotated[Cosine | Linear | WSD | Infinite | Constant, Field(discriminator="kind")]
SCHEDULES = {c.model_fields["kind"].default: c for c in (Cosine, Linear, WSD, Infinite, Constant)}


def _cos_interp(hi: float, lo: float, progress: float) -> float:
    return lo + (hi - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(spec: _Sched, step: int, total: int) -> float:
    """LR at `step` (0-based, within the stage) of a stage of `total` steps. Pure."""
    if total <= 0:
        raise ValueError("total steps must be positive")
    step = min(max(step, 0), total)
    w = spec.warmup_steps(total)
    if step < w:
        return spec.peak_lr * step / w
    n = step - w
    if isinstance(spec, Constant):
        return spec.peak_lr
    if isinstance(spec, Cosine):
        return _cos_interp(spec.peak_lr, spec.min_lr, n / max(1, total - w))
    if isinstance(spec, Linear):
        return spec.min_lr + (spec.peak_lr - spec.min_lr) * max(0.0, (total - step) / max(1, total - w))
    if isinstance(spec, WSD):
        d = int(round(spec.decay * total))
        stable_end = total - d
        if step < stable_end:
            return spec.peak_lr
        p = (step - stable_end) / max(1, d)
        hi, lo = spec.peak_lr, spec.min_lr
        if spec.shape == "exp":
            return hi * (lo / hi) ** p
        if spec.shape == "1-sqrt":
            return lo + (hi - lo) * (1.0 - math.sqrt(p))
        if spec.shape == "linear":
            return lo + (hi - lo) * (1.0 - p)
        return _cos_interp(hi, lo, p)
    if isinstance(spec, Infinite):
        c = int(round(spec.cooldown * total))
        k = int(round(spec.constant * total))
        hi, mid = spec.peak_lr, spec.const_lr
        if n <= c and c > 0:
            x = n / c
            if spec.cooldown_shape == "cosine":
                return _cos_interp(hi, mid, x)

            def h(v: float) -> float:
                return 1.0 / math.sqrt(1.0 + spec.timescale * v) - 1.0

            return hi + (mid - hi) * h(x) / h(1.0)
        m = n - c - k
        if m <= 0:
            return mid
        anneal = max(1, total - w - c - k)
        return mid * math.exp(-math.log(mid / spec.min_lr) * min(m, anneal) / anneal)
    raise TypeError(f"unknown schedule {type(spec).__name__}")


def stage_lrs(spec: _Sched, total: int) -> list[float]:
    """LR at every step of a stage (for plots and tests)."""
    return [lr_at(spec, t, total) for t in range(total)]
