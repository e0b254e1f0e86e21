"""Mixer protocol, the observation a mixer sees, and the registry of mixers by name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ValidationError

from corpus.names import source_name
from store.configs import Config
from store.errors import InputError, RegistryError, SpecError


@dataclass(frozen=True)
class RoundRecord:
    """What one finished round tells a mixer."""

    stage_index: int
    round_index: int
    weights: dict[str, float]
    eval_losses: dict[str, float]
    domain_train_losses: dict[str, float] = field(default_factory=dict)
    domain_loss_trace: dict[str, list[float | None]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    """Downstream scores of the round's checkpoint (`task metric` -> value; spec `evals:`), those
    recorded by the time the mixer is asked (a mixer with `wait_for_evals` gets its last round's)."""


@dataclass(frozen=True)
class Observation:
    """Everything a mixer may base the next round's weights on; built from the run store."""

    stage_index: int
    round_index: int
    num_rounds: int
    stage_domains: list[str]
    """Domains new in (trained by) this stage."""
    replay_domains: list[str]
    """Earlier domains replayed in this stage."""
    replay_fraction: float
    """Share of each batch the stage's replay spec asks for."""
    domain_tokens: dict[str, int]
    """Training tokens available per domain (for proportional / temperature mixing)."""
    history: list[RoundRecord] = field(default_factory=list)
    """Finished rounds of this run, oldest first."""
    start_losses: dict[str, float] = field(default_factory=dict)
    """Validation loss per domain when this stage started (empty before anything was measured)."""
    reference_losses: dict[str, float] = field(default_factory=dict)
    """A reference run's final validation losses (DoReMi's excess-loss baseline), if configured."""
    seed: int = 0
    """Run seed (random mixers draw from it, so a resumed run repeats its draws)."""
    score_roles: dict[str, str] = field(default_factory=dict)
    """Role of each downstream task (`source`: the domain the model came from, `target`: the one it
    is continued on), from the spec's `evals:`; the scores are in each round's record."""

    @property
    def stage_history(self) -> list[RoundRecord]:
        return [h for h in self.history if h.stage_index == self.stage_index]

    def latest_losses(self) -> dict[str, float]:
        return self.history[-1].eval_losses if self.history else dict(self.start_losses)

    def loss(self, domain: str, losses: dict[str, float] | None = None) -> float | None:
        return (self.latest_losses() if losses is None else losses).get(source_name(domain))

    @property
    def domains(self) -> list[str]:
        return [*self.stage_domains, *self.replay_domains]

    @property
    def progress(self) -> float:
        return self.round_index / max(1, self.num_rounds)


class MixerConfig(Config):
    """A mixer's typed config; each registered mixer subclasses it with its own fields."""

    kind: str = ""
    """Registered name of the mixer (`cpt mixers` lists them); the spec's `kind`."""
    wait_for_evals: bool = False
    """Before each round, wait for the previous round's downstream evaluations (spec `evals:`) so
    its scores are in the observation. Training waits too (the previous checkpoint is committed,
    then evaluated); the wait is recorded as an event of the run. An evaluation that needs CPUs or
    GPUs the worker group holds gets them: the group is stopped for the wait (an event) and the
    next round starts a new one from the checkpoint; give `evals:` resources of their own beside
    the group to keep it."""


class Mixer:
    """Maps an observation to the next round's weights. Subclasses set `name` and `Config`."""

    name: ClassVar[str]
    Config: ClassVar[type[MixerConfig]] = MixerConfig

    def __init__(self, config: MixerConfig):
        self.config = config

    def propose(self, obs: Observation) -> dict[str, float]:
        raise NotImplementedError

    def reads_replay_fraction(self) -> bool:
        """Whether the stage's `replay.fraction` sets this mixer's replay share. It means one thing
        everywhere (the expected share of each batch drawn from replay domains); a mixer that sets
        every weight itself does not read it, and the spec then rejects a non-zero fraction."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


MIXERS: dict[str, type[Mixer]] = {}


def register(cls: type[Mixer]) -> type[Mixer]:
    MIXERS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    # importing registers them
    import mixers.adaptive  # noqa: F401
    import mixers.agent  # noqa: F401
    import mixers.static  # noqa: F401


def mixer_names() -> list[str]:
    _load_builtin()
    return sorted(MIXERS)


def parse_mixer(value: Any) -> MixerConfig:
    """`{kind: NAME, ...params}` -> that mixer's typed config, validated. Errors are ValueErrors
    whose text starts with the failing field's sub-path (`.kind: ...`, `.beta: ...`), so a spec
    error names the whole path (stages.1.mixer.beta)."""
    if isinstance(value, MixerConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping {{kind: NAME, ...params}}, got {type(value).__name__}")
    _load_builtin()
    params = dict(value)
    kind = params.pop("kind", None)
    if not isinstance(kind, str) or kind not in MIXERS:  # a list or a mapping is not a name (nor hashable)
        raise ValueError(f".kind: unknown mixer {kind!r}; valid: {', '.join(sorted(MIXERS))}" if kind is not None
                         else f".kind: a mixer needs a kind; valid: {', '.join(sorted(MIXERS))}")
    try:
        return MIXERS[kind].Config(kind=kind, **params)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ValueError(f".{loc}: {msg} (mixer {kind!r})") from None


def build_mixer(spec: MixerConfig | dict[str, Any], where: str = "mixer") -> Mixer:
    """Build a mixer from its typed config (or `{kind: NAME, ...params}`); errors name the field
    and list the valid choices."""
    try:
        config = parse_mixer(spec)
    except ValueError as exc:
        sub, _, msg = str(exc).partition(": ") if str(exc).startswith(".") else ("", "", str(exc))
        raise (RegistryError if "unknown mixer" in msg else SpecError)(f"{where}{sub}: {msg}") from None
    return MIXERS[config.kind](config)


def check_weights(weights: dict[str, float], known: list[str], where: str = "weights") -> dict[str, float]:
    """Validate a mixture: known domains, non-negative, finite, sums to 1 (within 1e-6)."""
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown domain(s) {unknown}; valid: {sorted(known)}")
    for d, w in weights.items():
        if not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise InputError(f"{where}.{d}: weight must be a finite number >= 0, got {w!r}")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise InputError(f"{where}: weights must sum to 1, got {total:.6g}")
    return {d: float(w) for d, w in weights.items() if w > 0}


def with_replay(new: dict[str, float], replay: dict[str, float], fraction: float) -> dict[str, float]:
    """Scale new-data weights by (1 - f) and replay weights by f (gpt-neox replay blending)."""
    if not replay or fraction <= 0:
        return _normalise(new)
    out = {d: w * (1 - fraction) for d, w in _normalise(new).items()}
    for d, w in _normalise(replay).items():
        out[d] = out.get(d, 0.0) + w * fraction
    return out


def softmax(scores: dict[str, float]) -> dict[str, float]:
    top = max(scores.values())
    ex = {d: math.exp(v - top) for d, v in scores.items()}
    return _normalise(ex)


def smooth(weights: dict[str, float], c: float) -> dict[str, float]:
    """(1 - c) w + c / K: keeps every domain sampled a little."""
    k = len(weights)
    return {d: (1 - c) * w + c / k for d, w in weights.items()}


def _normalise(w: dict[str, float]) -> dict[str, float]:
    total = sum(w.values())
    if total <= 0:
        raise InputError("mixture has no positive weight")
    return {d: v / total for d, v in w.items()}
