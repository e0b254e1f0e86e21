"""The Data Mixing Agent: a small policy mapping a run's mixing state to the next mixture.

State (feature version 3): one row of `PER_DOMAIN` numbers per domain plus `GLOBAL` numbers. A
domain's row carries its *role* (1 = new in the stage, the target; 0 = replayed, a source), its
last two weights, its validation loss relative to the stage start (log ratio), a window of its
last `WINDOW` per-round relative loss changes (the trend; the paper's state likewise carries the
feedback history) and its loss level: the log of its current loss over the mean current loss of
all the stage's domains. Version 2 had no level, so at a stage's first round every new domain's
row was identical and a policy could not tell a new language from new junk until a round had
been spent on both; the level tells text the model already predicts well (near-duplicates of what
it has seen) from text it cannot yet (a new field, or shuffled tokens) before any weight is spent.
Nothing in the state is tied to a domain's name or a fixed number of domains: the networks
(mixers/agent_nets.py) see a set of domain rows and pool them by role, so one agent mixes 2, 3
or 18 domains. Action: the next weights on the simplex. Reward: balanced improvement,
-1/2 (relative change of the target loss + relative change of the source loss).

Training (mixers/agent_train.py) is offline, on stored transitions, with AWR or CQL and model
selection on held-out trajectories. Every stored transition records the feature version it was
computed with; an agent file records its own, and both are checked.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from pydantic import Field

from corpus.names import source_name
from mixers.base import Mixer, MixerConfig, Observation, RoundRecord, register
from store.errors import CheckpointError
from store.records import RoundResult

FEATURE_VERSION = "3"
WINDOW = 3
"""Per-round loss changes each domain row carries (most recent first)."""
PER_DOMAIN = ("role", "weight", "prev_weight", "log_loss_ratio", *(f"delta_{i}" for i in range(1, WINDOW + 1)),
              "log_loss_level")
GLOBAL = ("progress", "inv_domains")
AGENT_FORMAT = "cpt-agent/3"


def state_features(obs: Observation) -> list[float]:
    """Flat state: the K domain rows (feature order: new domains, then replayed), then GLOBAL."""
    doms = obs.domains
    k = len(doms)
    stage = obs.stage_history
    last = stage[-1].weights if stage else None
    prev = stage[-2].weights if len(stage) >= 2 else last
    start = obs.start_losses or obs.latest_losses()
    # losses at the stage start and after each round; only the last WINDOW + 1 are read (a late
    # round of a long stage costs what an early one does)
    tail = stage[-(WINDOW + 1):]
    seq = ([start] if len(tail) == len(stage) else []) + [h.eval_losses for h in tail]
    now = [v for v in (seq[-1].get(source_name(d)) for d in doms) if v]
    mean_now = sum(now) / len(now) if now else None
    rows: list[float] = []
    for d in doms:
        vals = [x.get(source_name(d)) for x in seq]
        cur, first = vals[-1], start.get(source_name(d))
        deltas = []
        for j in range(1, WINDOW + 1):
            a, b = (vals[-j], vals[-j - 1]) if len(vals) > j else (None, None)
            # relative changes are ~0.01: scaled x10 so they sit on the scale of the other inputs
            deltas.append(10.0 * (a - b) / b if a and b else 0.0)
        rows += [1.0 if d in obs.stage_domains else 0.0,
                 last.get(d, 0.0) if last else 1.0 / k, prev.get(d, 0.0) if prev else 1.0 / k,
                 math.log(cur / first) if cur and first else 0.0, *deltas,
                 math.log(cur / mean_now) if cur and mean_now else 0.0]
    return [*rows, obs.progress, 1.0 / k]


def split_state(state: list[float], k: int) -> tuple[list[list[float]], list[float]]:
    """Flat state -> (K domain rows, global features); checks the length fits the feature version."""
    f = len(PER_DOMAIN)
    if len(state) != k * f + len(GLOBAL):
        raise CheckpointError(f"state of {len(state)} numbers does not fit {k} domains x {f} + {len(GLOBAL)} "
                              f"(feature version {FEATURE_VERSION})")
    return [state[i * f:(i + 1) * f] for i in range(k)], state[k * f:]


def mean_relative_change(before: dict[str, float], after: dict[str, float], names: list[str]) -> float | None:
    """Relative change of the mean over the `names` measured in both (None: none is, or that mean is not > 0)."""
    names = [n for n in names if n in before and n in after]
    b = sum(before[n] for n in names) / len(names) if names else 0.0
    return (sum(after[n] for n in names) / len(names) - b) / b if b > 0 else None


def balanced_reward(before: dict[str, float], after: dict[str, float], target: list[str],
                    source: list[str]) -> float:
    """-1/2 (relative change of mean target loss + relative change of mean source loss)."""
    parts = [x for group in (target, source)
             if (x := mean_relative_change(before, after, [source_name(d) for d in group])) is not None]
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
            "next_state": state_features(nxt), "done": obs.round_index + 1 >= obs.num_rounds, "mixer": mixer,
            "feature_version": FEATURE_VERSION}


def save_agent(nets, path: str | Path, meta: dict[str, str]) -> Path:
    """Atomic write: the networks' tensors and the metadata in one safetensors file."""
    from safetensors.torch import save_file

    from store.files import output_file

    with output_file(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in nets.state_dict().items()}, str(tmp), metadata=meta)
    return Path(path)


def load_agent(path: str | Path):
    """-> (networks in eval mode, metadata). An agent of another feature version is refused."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from mixers.agent_nets import MixingNets

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give the agent file (`cpt agent train -o FILE`)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot load agent ({exc})") from None
    bad = [k for k, v in state.items() if not v.is_floating_point() or not bool(v.isfinite().all())]
    if bad:
        raise CheckpointError(f"{path}: agent tensor {bad[0]!r} holds non-finite values (NaN or inf); retrain it")
    if meta.get("format") != AGENT_FORMAT or meta.get("feature_version") != FEATURE_VERSION:
        raise CheckpointError(f"{path}: not a cpt agent with feature version {FEATURE_VERSION} (found format "
                              f"{meta.get('format')!r}, feature version {meta.get('feature_version')!r}); "
                              f"retrain it with `cpt agent train`")
    nets = MixingNets(len(PER_DOMAIN), len(GLOBAL), int(meta["hidden"]))
    try:
        nets.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: agent tensors do not match its metadata ({str(exc)[:200]})") from None
    nets.eval()
    return nets, meta


class AgentConfig(MixerConfig):
    path: str
    """safetensors file written by `cpt agent train`."""
    min_weight: float = Field(0.0, ge=0, lt=1)
    """Floor per domain (mixed in like smoothing)."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """The agent file's SHA-256: recorded with the run when it is submitted (or given to pin a file);
    a resume refuses a file that changed since."""


@register
class Agent(Mixer):
    """A trained Data Mixing Agent: next weights = mean of its Dirichlet policy at the current state."""

    name = "agent"
    Config = AgentConfig

    def __init__(self, config: AgentConfig):
        super().__init__(config)
        path = Path(config.path)
        if not path.is_file():
            raise CheckpointError(f"{config.path}: agent file does not exist (train one with `cpt agent train`)")
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        if config.sha256 is not None and found != config.sha256:
            raise CheckpointError(f"{config.path}: agent file changed since the run recorded it (sha256 "
                                  f"{config.sha256[:12]}..., now {found[:12]}...); restore that file, or "
                                  f"submit a new run with this one")
        self.config = config.model_copy(update={"sha256": found})  # what the run records
        # loaded (and checked: format, shapes, finite) now, when the spec is validated, not after
        # the stages before the agent's have trained
        self._nets, self.meta = load_agent(path)

    def propose(self, obs: Observation) -> dict[str, float]:
        k = len(obs.domains)
        mean = self._nets.mean_action(*split_state(state_features(obs), k))
        c = self.config.min_weight
        total = sum(mean)
        return {d: (1 - c) * w / total + c / k for d, w in zip(obs.domains, mean, strict=True)}
