"""LR schedules: typed configs that compute their own LR as a pure function of the stage step.

Each stage re-warms from 0 and re-decays over its own steps (Ibrahim et al. 2024); the
'infinite' schedule instead cools down once to a constant LR that later stages continue at.
Warmup follows transformers' convention (lr = peak * t / W, so step 0 trains at 0), which lets
the tests compare against transformers' own schedule functions.
Every schedule checks its fields against each other (min_lr <= const_lr <= peak_lr, phase
fractions that fit in the stage); a decaying schedule takes `min_lr` or `min_lr_ratio` (the
paper's 0.1 x peak).

Adding a schedule is one class in this file: subclass `Schedule` (or `Decaying`), give it a
`kind: Literal["name"]` tag and an `lr(step, total)`, and decorate it with `@register`; the
spec's union of schedules (`ScheduleSpec`) is built from the registry below, so `cpt validate`
knows it at once. Registration refuses a class without its own `lr` or tag (at import, not on a
rank in the middle of training).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import ConfigDict, Field, model_validator

from store.configs import Config


class Schedule(Config):
    """What every schedule has: a peak LR and a linear warmup from 0."""

    model_config = ConfigDict(frozen=True)

    peak_lr: float = Field(3e-3, gt=0, le=1)
    """LR at the end of warmup (the re-warm target)."""
    warmup: float = Field(0.01, ge=0, lt=1)
    """Warmup length as a fraction of the stage's steps."""

    def warmup_steps(self, total: int) -> int:
        return int(round(self.warmup * total))

    def lr(self, step: int, total: int) -> float:
        """LR at `step` (0-based, within the stage) of a stage of `total` steps. Pure."""
        raise NotImplementedError

    def _clamp(self, step: int, total: int) -> tuple[int, int, float | None]:
        """(step clamped to [0, total], warmup steps, the warmup LR if `step` is still warming up):
        phase 1 of every schedule."""
        if total <= 0:
            raise ValueError("total steps must be positive")
        step = min(max(step, 0), total)
        w = self.warmup_steps(total)
        return step, w, (self.peak_lr * step / w if step < w else None)


class Decaying(Schedule):
    """A schedule that ends the stage at `min_lr`."""

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


SCHEDULES: dict[str, type[Schedule]] = {}


def register(cls: type[Schedule]) -> type[Schedule]:
    """Add a schedule to the registry (and so to the spec's union); refuses an incomplete class."""
    kind = cls.model_fields.get("kind")
    if kind is None or not isinstance(kind.default, str):
        raise TypeError(f"schedule {cls.__name__} needs a `kind: Literal[...]` tag with a default")
    if "lr" not in cls.__dict__:
        raise TypeError(f"schedule {cls.__name__} must define its own lr(step, total)")
    if kind.default in SCHEDULES:
        raise TypeError(f"schedule kind {kind.default!r} is registered twice")
    SCHEDULES[kind.default] = cls
    return cls


def _cos_interp(hi: float, lo: float, progress: float) -> float:
    return lo + (hi - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


@register
class Cosine(Decaying):
    """Linear warmup, then cosine decay to min_lr over the rest of the stage."""

    kind: Literal["cosine"] = "cosine"
    """Selects this schedule: `schedule: {kind: cosine, ...}` in a stage."""

    def lr(self, step: int, total: int) -> float:
        step, w, warm = self._clamp(step, total)
        if warm is not None:  # 1. warmup
            return warm
        return _cos_interp(self.peak_lr, self.min_lr, (step - w) / max(1, total - w))  # 2. cosine decay


@register
class Linear(Decaying):
    """Linear warmup, then linear decay to min_lr (Defazio et al. 2023)."""

    kind: Literal["linear"] = "linear"
    """Selects this schedule: `schedule: {kind: linear, ...}` in a stage."""

    def lr(self, step: int, total: int) -> float:
        step, w, warm = self._clamp(step, total)
        if warm is not None:  # 1. warmup
            return warm
        # 2. linear decay
        return self.min_lr + (self.peak_lr - self.min_lr) * max(0.0, (total - step) / max(1, total - w))


@register
class WSD(Decaying):
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

    def lr(self, step: int, total: int) -> float:
        step, w, warm = self._clamp(step, total)
        if warm is not None:  # 1. warmup
            return warm
        d = int(round(self.decay * total))
        if step < total - d:  # 2. stable at peak
            return self.peak_lr
        p, hi, lo = (step - (total - d)) / max(1, d), self.peak_lr, self.min_lr  # 3. decay
        if self.shape == "exp":
            return hi * (lo / hi) ** p
        if self.shape == "1-sqrt":
            return lo + (hi - lo) * (1.0 - math.sqrt(p))
        if self.shape == "linear":
            return lo + (hi - lo) * (1.0 - p)
        return _cos_interp(hi, lo, p)


@register
class Infinite(Decaying):
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

    def lr(self, step: int, total: int) -> float:
        step, w, warm = self._clamp(step, total)
        if warm is not None:  # 1. warmup
            return warm
        n, c, k = step - w, int(round(self.cooldown * total)), int(round(self.constant * total))
        hi, mid = self.peak_lr, self.const_lr
        if n <= c and c > 0:  # 2. cooldown to const_lr
            x = n / c
            if self.cooldown_shape == "cosine":
                return _cos_interp(hi, mid, x)

            def h(v: float) -> float:
                return 1.0 / math.sqrt(1.0 + self.timescale * v) - 1.0

            return hi + (mid - hi) * h(x) / h(1.0)
        m = n - c - k
        if m <= 0:  # 3. constant
            return mid
        anneal = max(1, total - w - c - k)  # 4. exponential anneal to min_lr
        return mid * math.exp(-math.log(mid / self.min_lr) * min(m, anneal) / anneal)


@register
class Constant(Schedule):
    """Optional warmup, then a constant LR (e.g. continuing at a small LR without re-warm)."""

    kind: Literal["constant"] = "constant"
    """Selects this schedule: `schedule: {kind: constant, ...}` in a stage."""
    warmup: float = Field(0.0, ge=0, lt=1)
    """Warmup length as a fraction of the stage's steps (0: no re-warm)."""

    def lr(self, step: int, total: int) -> float:
        step, w, warm = self._clamp(step, total)
        return self.peak_lr if warm is None else warm  # 1. warmup, 2. constant


# every registered schedule, told apart by `kind` (a stage's `schedule: {kind: ..., ...}`)
ScheduleSpec = Annotated[Union[tuple(SCHEDULES.values())], Field(discriminator="kind")]  # noqa: UP007


def stage_lrs(schedule: Schedule, total: int) -> list[float]:
    """LR at every step of a stage (for plots and tests)."""
    return [schedule.lr(t, total) for t in range(total)]
