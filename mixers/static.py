"""Baseline mixers: static weights, fixed replay ratio, proportional, temperature."""

from __future__ import annotations

from pydantic import Field, field_validator

from mixers.base import Mixer, MixerConfig, Observation, _normalise, check_weights, register, with_replay


class StaticConfig(MixerConfig):
    weights: dict[str, float]
    """Weight per domain (non-negative, summing to 1); the same every round."""

    @field_validator("weights")
    @classmethod
    def _valid(cls, v: dict[str, float]) -> dict[str, float]:
        for d, w in v.items():
            if w < 0:
                raise ValueError(f"weight of {d!r} is negative ({w})")
        if abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {sum(v.values()):.6g}")
        return v


@register
class Static(Mixer):
    """The user's weights, unchanged (they may include replay domains)."""

    name = "static"
    Config = StaticConfig

    def propose(self, obs: Observation) -> dict[str, float]:
        return check_weights(self.config.weights, obs.domains, "mixer.weights")


class FixedReplayConfig(MixerConfig):
    fraction: float | None = Field(None, ge=0, lt=1)
    """Replay share of each batch; None takes the stage's replay.fraction."""


@register
class FixedReplay(Mixer):
    """New domains uniform at (1 - f), replayed domains uniform at f (Ibrahim et al. 2024)."""

    name = "fixed_replay"
    Config = FixedReplayConfig

    def reads_replay_fraction(self) -> bool:
        return self.config.fraction is None

    def propose(self, obs: Observation) -> dict[str, float]:
        f = obs.replay_fraction if self.config.fraction is None else self.config.fraction
        return with_replay({d: 1.0 for d in obs.stage_domains}, {d: 1.0 for d in obs.replay_domains}, f)


class TemperatureConfig(MixerConfig):
    temperature: float = Field(1.0, gt=0)
    """tau: weights proportional to tokens^(1/tau); 1 is proportional, large tends to uniform."""
    fraction: float | None = Field(None, ge=0, lt=1)
    """Replay share; None takes the stage's replay.fraction."""
    pool: bool = False
    """Weight new and replay domains together by tokens (the replay fraction is then ignored)."""


@register
class Temperature(Mixer):
    """Token-count based sampling p_i ~ n_i^(1/tau) within new and within replay domains."""

    name = "temperature"
    Config = TemperatureConfig

    def _by_size(self, domains: list[str], obs: Observation) -> dict[str, float]:
        raw = {d: max(obs.domain_tokens.get(d, 0), 1) ** (1.0 / self.config.temperature) for d in domains}
        return _normalise(raw) if raw else {}

    def reads_replay_fraction(self) -> bool:
        return not self.config.pool and self.config.fraction is None

    def propose(self, obs: Observation) -> dict[str, float]:
        if self.config.pool:
            return self._by_size(obs.domains, obs)
        f = obs.replay_fraction if self.config.fraction is None else self.config.fraction
        return with_replay(self._by_size(obs.stage_domains, obs), self._by_size(obs.replay_domains, obs), f)


class ProportionalConfig(MixerConfig):
    fraction: float | None = Field(None, ge=0, lt=1)
    """Replay share; None takes the stage's replay.fraction."""
    pool: bool = False
    """Weight new and replay domains together by tokens (the replay fraction is then ignored)."""


@register
class Proportional(Temperature):
    """Weights proportional to each domain's token count (temperature 1)."""

    name = "proportional"
    Config = ProportionalConfig

    def __init__(self, config: ProportionalConfig):
        super().__init__(TemperatureConfig(temperature=1.0, fraction=config.fraction, pool=config.pool))


class DirichletConfig(MixerConfig):
    concentration: float = Field(1.0, gt=0)
    """Dirichlet concentration per domain: 1 is uniform on the simplex, small values favour corners."""
    seed: int = 0
    """Extra seed so several exploration runs draw different mixtures."""
    min_weight: float = Field(0.02, ge=0, lt=0.5)
    """Floor per domain (mixed in like smoothing) so every domain keeps a loss signal."""


@register
class Dirichlet(Mixer):
    """Random mixtures drawn per round from a Dirichlet: exploration for the Data Mixing Agent.
    A pure function of (run seed, mixer seed, stage, round): a resumed run repeats its draws."""

    name = "dirichlet"
    Config = DirichletConfig

    def propose(self, obs: Observation) -> dict[str, float]:
        import numpy as np

        rng = np.random.default_rng([obs.seed, self.config.seed, obs.stage_index, obs.round_index])
        draw = rng.dirichlet([self.config.concentration] * len(obs.domains))
        k, floor = len(obs.domains), self.config.min_weight
        return {d: float((1 - floor) * w + floor / k) for d, w in zip(obs.domains, draw, strict=True)}
