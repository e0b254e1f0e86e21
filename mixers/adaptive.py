"""Adaptive mixers that re-weight between rounds from measured losses:
DoReMi-style excess loss (Xie et al. 2023), Online Data Mixing with EXP3 (Albalak et al. 2023),
RECAP-style convergence/instability (2025); each class docstring gives its update rule."""

from __future__ import annotations

import math
import statistics
from typing import Any

from pydantic import Field

from corpus.names import source_name
from mixers.base import Mixer, MixerConfig, Observation, register, smooth, softmax


class DoReMiConfig(MixerConfig):
    eta: float = Field(1.0, gt=0)
    """Step size of the exponentiated-gradient update on log-weights."""
    smoothing: float = Field(1e-3, ge=0, le=1)
    """c in (1 - c) w + c / K."""
    reference: dict[str, float] | None = None
    """Reference validation loss per domain (source domain names)."""
    reference_run: str | None = None
    """Or: a finished run whose final validation losses are the reference (resolved by the controller)."""


@register
class DoReMi(Mixer):
    """Excess loss over a reference drives an exponentiated-gradient update (Xie et al. 2023)."""

    name = "doremi"
    Config = DoReMiConfig

    def __init__(self, config: DoReMiConfig):
        super().__init__(config)
        self.log_w: dict[str, float] = {}

    def propose(self, obs: Observation) -> dict[str, float]:
        ref = self.config.reference or obs.reference_losses
        doms = obs.domains
        if set(self.log_w) != set(doms):  # a new stage: start from uniform over its domains
            self.log_w = {d: 0.0 for d in doms}
        if obs.history and ref:
            for d in doms:
                cur, base = obs.loss(d), ref.get(source_name(d))
                if cur is not None and base is not None:
                    self.log_w[d] += self.config.eta * max(cur - base, 0.0)
        return smooth(softmax(self.log_w), self.config.smoothing)

    def state_dict(self) -> dict[str, Any]:
        return {"log_w": dict(self.log_w)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_w = dict(state.get("log_w", {}))


class ODMConfig(MixerConfig):
    reward_scale: float = Field(0.1, gt=0)
    """Rewards are training losses times this (the ODM code divides by 10)."""


@register
class OnlineDataMixing(Mixer):
    """EXP3 bandit: domains with high training loss are sampled more (Albalak et al. 2023)."""

    name = "odm"
    Config = ODMConfig

    def __init__(self, config: ODMConfig):
        super().__init__(config)
        self.r_hat: dict[str, float] = {}
        self.t = 0
        self.last: dict[str, float] = {}

    @staticmethod
    def _eps(k: int, t: int) -> float:
        return min(1.0 / k, math.sqrt(math.log(k) / (k * max(t, 1)))) if k > 1 else 0.0

    def propose(self, obs: Observation) -> dict[str, float]:
        doms = obs.domains
        k = len(doms)
        if set(self.r_hat) != set(doms):
            self.r_hat, self.t, self.last = {d: 0.0 for d in doms}, 0, {d: 1.0 / k for d in doms}
        stage = obs.stage_history
        if stage:  # importance-weighted reward of each domain sampled last round
            for d, loss in stage[-1].domain_train_losses.items():
                if d in self.r_hat and self.last.get(d, 0) > 0:
                    self.r_hat[d] += self.config.reward_scale * loss / self.last[d]
            self.t += 1
        prev_eps, eps = self._eps(k, self.t), self._eps(k, self.t + 1)
        probs = softmax({d: prev_eps * r for d, r in self.r_hat.items()})
        self.last = {d: (1 - k * eps) * p + eps for d, p in probs.items()}
        return dict(self.last)

    def state_dict(self) -> dict[str, Any]:
        return {"r_hat": dict(self.r_hat), "t": self.t, "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.r_hat, self.t, self.last = dict(state["r_hat"]), int(state["t"]), dict(state["last"])


class RecapConfig(MixerConfig):
    window: int = Field(10, ge=2)
    """W: steps per window; the score compares the last W steps with the W before."""
    temperature: float = Field(5.0, gt=0)
    """T in softmax(s / T); large T keeps weights near uniform."""
    min_weight: float = Field(0.0, ge=0, lt=1)
    """Floor on every domain's weight (mixed in like smoothing)."""


@register
class Recap(Mixer):
    """Convergence (mu / mu_prev) plus instability (sigma / (mu + mu_prev)) of each domain's
    training loss over sliding windows; weights = softmax(score / T) (Phan et al. 2025)."""

    name = "recap"
    Config = RecapConfig

    def score(self, series: list[float]) -> float | None:
        w = self.config.window
        if len(series) < 2 * w:
            return None
        last, prev = series[-w:], series[-2 * w:-w]
        mu, mu_prev = statistics.fmean(last), statistics.fmean(prev)
        conv = mu / mu_prev if mu_prev > 0 else 1.0
        inst = statistics.pstdev(last) / (mu + mu_prev) if mu + mu_prev > 0 else 0.0
        return conv + inst

    def propose(self, obs: Observation) -> dict[str, float]:
        scores = {}
        for d in obs.domains:
            series = [x for h in obs.history for x in h.domain_loss_trace.get(d, []) if x is not None]
            s = self.score(series)
            scores[d] = 1.0 if s is None else s  # unknown: neutral (converged, stable)
        return smooth(softmax({d: s / self.config.temperature for d, s in scores.items()}), self.config.min_weight)
