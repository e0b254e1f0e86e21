"""The Data Mixing Agent: a small policy mapping a run's mixing state to the next mixture.

State (3K + 1 numbers, K = domains in feature order: the stage's new domains, then its replay
domains): the current weights; each domain's validation loss relative to the stage start; its
relative change over the last round; progress through the stage.
Action: the next weights on the simplex. Reward: balanced improvement,
-1/2 (relative change of the target loss + relative change of the source loss).

Training is offline **advantage-weighted regression** (AWR, Peng et al. 2019) on every stored
transition: fit a value baseline to discounted returns, then fit a Dirichlet policy by maximum
likelihood with each logged action weighted by exp(advantage / beta). Why AWR rather than CQL:
our logs are a few hundred transitions from random (Dirichlet) exploration, actions live on a
simplex, and AWR needs only a value regression and a weighted likelihood: no Q-function over
continuous simplex actions, no sampling of out-of-distribution actions, few hyper-parameters, and
the policy stays close to the data (the conservative property CQL buys with a penalty).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import Field

from corpus.names import source_name
from mixers.base import Mixer, MixerConfig, Observation, RoundRecord, register
from store.errors import CheckpointError
from workers.plan import RoundResult

FEATURE_VERSION = "1"


def state_features(obs: Observation) -> list[float]:
    doms = obs.domains
    k = len(doms)
    stage = obs.stage_history
    w = stage[-1].weights if stage else {}
    weights = [w.get(d, 0.0) for d in doms] if stage else [1.0 / k] * k
    cur = obs.latest_losses()
    start = obs.start_losses or cur
    prev = obs.history[-2].eval_losses if stage and len(obs.history) >= 2 else start
    ratio, delta = [], []
    for d in doms:
        s = source_name(d)
        c, s0, p = cur.get(s), start.get(s), prev.get(s)
        ratio.append(c / s0 if c and s0 else 1.0)
        delta.append((c - p) / p if c and p else 0.0)
    return [*weights, *ratio, *delta, obs.round_index / max(1, obs.num_rounds)]


def balanced_reward(before: dict[str, float], after: dict[str, float], target: list[str],
                    source: list[str]) -> float:
    """-1/2 (relative change of mean target loss + relative change of mean source loss)."""
    def rel(group: list[str]) -> float | None:
        names = [source_name(d) for d in group if source_name(d) in before and source_name(d) in after]
        if not names:
            return None
        b = sum(before[n] for n in names) / len(names)
        return (sum(after[n] for n in names) / len(names) - b) / b

    parts = [x for x in (rel(target), rel(source)) if x is not None]
    return -sum(parts) / len(parts) if parts else 0.0


def transition(obs: Observation, state: list[float], weights: dict[str, float], result: RoundResult,
               mixer: str) -> dict[str, Any]:
    """(state, action, reward, next state) of a finished round, as stored with its commit."""
    from dataclasses import replace

    before = obs.latest_losses() or (result.eval_before or {})
    record = RoundRecord(obs.stage_index, obs.round_index, weights, result.eval_losses, result.domain_train_losses,
                         result.domain_loss_trace)
    nxt = replace(obs, round_index=obs.round_index + 1, history=[*obs.history, record],
                  start_losses=obs.start_losses or (result.eval_before or {}))
    return {"num_domains": len(obs.domains), "domains": obs.domains, "state": state,
            "action": [weights.get(d, 0.0) for d in obs.domains],
            "reward": balanced_reward(before, result.eval_losses, obs.stage_domains, obs.replay_domains),
            "next_state": state_features(nxt), "done": obs.round_index + 1 >= obs.num_rounds, "mixer": mixer}


def _mlp(n_in: int, n_out: int, hidden: int):
    import torch.nn as nn

    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


def _concentration(net, x):
    import torch.nn.functional as F

    return F.softplus(net(x)) + 0.05


def train_agent(transitions: list[Any], num_domains: int, beta: float = 0.5, gamma: float = 0.9,
                hidden: int = 64, epochs: int = 400, seed: int = 0) -> tuple[Any, dict[str, str]]:
    """AWR on stored transitions (objects with run_id, stage_index, round_index, state, action, reward)."""
    import torch

    if len(transitions) < 4:
        raise CheckpointError(f"need at least 4 transitions with {num_domains} domains to train, "
                              f"found {len(transitions)} (run `cpt agent explore` first)")
    torch.manual_seed(seed)
    trajs: dict[tuple, list] = defaultdict(list)
    for t in transitions:
        trajs[(t.run_id, t.stage_index)].append(t)
    states, actions, returns = [], [], []
    for steps in trajs.values():
        steps.sort(key=lambda t: t.round_index)
        g = 0.0
        for t in reversed(steps):
            g = t.reward + gamma * g
            states.append(t.state)
            actions.append(t.action)
            returns.append(g)
    s = torch.tensor(states, dtype=torch.float32)
    a = torch.tensor(actions, dtype=torch.float32).clamp_min(1e-4)
    a = a / a.sum(dim=1, keepdim=True)
    g = torch.tensor(returns, dtype=torch.float32)
    g_scale = g.std().clamp_min(1e-8)
    value = _mlp(s.shape[1], 1, hidden)
    opt = torch.optim.Adam(value.parameters(), lr=3e-3)
    for _ in range(epochs):
        loss = ((value(s).squeeze(1) - g / g_scale) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        adv = g / g_scale - value(s).squeeze(1)
        weights = torch.exp(adv / beta).clamp(max=20.0)
    policy = _mlp(s.shape[1], num_domains, hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(epochs):
        dist = torch.distributions.Dirichlet(_concentration(policy, s))
        loss = -(weights * dist.log_prob(a)).sum() / weights.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta = {"format": "cpt-agent/1", "method": "awr", "feature_version": FEATURE_VERSION,
            "num_domains": str(num_domains), "hidden": str(hidden), "beta": str(beta), "gamma": str(gamma),
            "transitions": str(len(states)), "trajectories": str(len(trajs)),
            "mean_return": f"{float(g.mean()):.6g}", "final_policy_loss": f"{float(loss.detach()):.6g}",
            "runs": json.dumps(sorted({k[0] for k in trajs}))}
    return policy, meta


def save_agent(policy, path: str | Path, meta: dict[str, str]) -> Path:
    import os
    import uuid

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    save_file({k: v.detach().contiguous() for k, v in policy.state_dict().items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_agent(path: str | Path):
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot load agent ({exc})") from None
    if meta.get("format") != "cpt-agent/1" or meta.get("feature_version") != FEATURE_VERSION:
        raise CheckpointError(f"{path}: not a cpt agent with feature version {FEATURE_VERSION}")
    k = int(meta["num_domains"])
    policy = _mlp(3 * k + 1, k, int(meta["hidden"]))
    policy.load_state_dict(state)
    policy.eval()
    return policy, meta


class AgentConfig(MixerConfig):
    path: str
    """safetensors file written by `cpt agent train`."""
    min_weight: float = Field(0.0, ge=0, lt=1)
    """Floor per domain (mixed in like smoothing)."""


@register
class Agent(Mixer):
    """A trained Data Mixing Agent: next weights = mean of its Dirichlet policy at the current state."""

    name = "agent"
    Config = AgentConfig

    def __init__(self, config: AgentConfig):
        super().__init__(config)
        if not Path(config.path).is_file():
            raise CheckpointError(f"{config.path}: agent file does not exist (train one with `cpt agent train`)")
        self._policy = None

    def propose(self, obs: Observation) -> dict[str, float]:
        import torch

        if self._policy is None:
            self._policy, self.meta = load_agent(self.config.path)
        k = int(self.meta["num_domains"])
        if len(obs.domains) != k:
            raise CheckpointError(f"{self.config.path}: agent was trained for {k} domains, this stage mixes "
                                  f"{len(obs.domains)} ({obs.domains})")
        with torch.no_grad():
            alpha = _concentration(self._policy, torch.tensor([state_features(obs)], dtype=torch.float32))[0]
        mean = (alpha / alpha.sum()).tolist()
        c = self.config.min_weight
        total = sum(mean)
        return {d: (1 - c) * w / total + c / k for d, w in zip(obs.domains, mean, strict=True)}
