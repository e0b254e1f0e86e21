"""The round planner: what the next round is, as pure functions of the spec and the finished rounds.

No Ray, MLflow or SQL here. The driver (orchestrator/controller.py) reads the committed rounds
from the store (`Finished`), sizes the domains from their shards (`DomainSize`), and persists what
comes back; everything a round is (its mixture, cursors, LR segment, starting checkpoint, replay
shares) is decided here, so it is unit-tested without a cluster:

  observation(i, r, done)  -> the Observation a mixer sees (history, stage-start losses, sizes)
  propose(mixer, obs)      -> the round's weights, checked
  plan(i, r, ...)          -> the RoundPlan (cursors checked against max_epochs and changed shards)
  commit(obs, ...)         -> the mixing transition stored with the round's commit
  replay_fill(i, done)     -> which buffers the stage's data fills, from which cursors
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from corpus import order
from corpus.names import buffer_name, source_name
from mixers.agent import state_features, transition
from mixers.base import Mixer, Observation, RoundRecord, check_weights
from orchestrator.spec import RunSpec
from store.errors import DataError
from store.records import RoundPlan, RoundResult


@dataclass(frozen=True)
class Finished:
    """A committed round as the planner reads it (the store's row, parsed once)."""

    stage_index: int
    round_index: int
    weights: dict[str, float]
    eval_losses: dict[str, float]
    checkpoint: str
    plan: RoundPlan
    result: RoundResult
    mixer_state: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row) -> Finished:
        """From a store.models.Round of status finished."""
        return cls(row.stage_index, row.round_index, row.weights, row.eval_losses or {}, row.checkpoint_uri,
                   row.plan, row.result, row.mixer_state)


@dataclass(frozen=True)
class DataInfo:
    """What the planner needs of the run's data, read once from the domains' manifests."""

    tokenizer_hash: str
    vocab_size: int
    domain_tokens: dict[str, int]
    """Training tokens per domain (proportional and temperature mixers read them)."""

    @classmethod
    def from_manifests(cls, manifests: Mapping[str, Mapping[str, Any]]) -> DataInfo:
        first = next(iter(manifests.values()))
        return cls(first["tokenizer_hash"], first["vocab_size"],
                   {d: m["tokens"]["train"] for d, m in manifests.items()})


@dataclass(frozen=True)
class DomainSize:
    """A domain as cursors count it: `n` sequences of exactly the shards `data_id` names."""

    n: int
    data_id: str
    where: str
    """Its folder or URI (for messages)."""


@dataclass(frozen=True)
class BufferFill:
    """One replay buffer to fill after a stage: the positions the stage read of its source domain."""

    domain: str
    folder: Path | str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class RoundPlanner:
    """Plans the rounds of one run. Holds only the spec and what was read once at the run's start."""

    def __init__(self, spec: RunSpec, run_id: str, workdir: Path, data: DataInfo,
                 checkpoint_location: Callable[[str], str]):
        self.spec, self.run_id, self.workdir, self.data = spec, run_id, workdir, data
        self.checkpoint_location = checkpoint_location
        self._seen: tuple[list[Finished], list[RoundRecord]] = ([], [])  # what _history converted last

    # ---- where things are ----------------------------------------------------------------------
    def buffer_folder(self, domain: str) -> Path | str:
        """A domain's replay buffer: in the run's folder, or in its shared storage (checkpoints.uri)."""
        from corpus import fs
        from store.names import check_name, inside

        base = self.spec.checkpoints.uri
        if base is not None and fs.is_remote(base):
            return fs.join(fs.join(fs.join(base, self.run_id), "replay"), check_name(domain, "domain"))
        return inside(self.workdir / "replay", domain)

    def domain_paths(self) -> dict[str, str]:
        """Every domain the run may read, replay buffers (`replay/<domain>`) included."""
        paths = dict(self.spec.domains)
        for d in self.spec.buffered_domains():
            paths[buffer_name(d)] = str(self.buffer_folder(d))
        return paths

    # ---- the mixer's side ----------------------------------------------------------------------
    def observation(self, i: int, r: int, done: list[Finished], reference: Mapping[str, float],
                    scores: Mapping[tuple[int, int], dict[str, float]] | None = None,
                    roles: Mapping[str, str] | None = None) -> Observation:
        """What the mixer of stage i sees before round r: the run's history (with the downstream
        scores recorded so far, by (stage, round)) and the stage's start."""
        st = self.spec.stages[i]
        history = self._history(done)
        if scores:  # they arrive after their round committed: laid over the cached records
            history = [replace(h, scores=dict(scores[(h.stage_index, h.round_index)]))
                       if (h.stage_index, h.round_index) in scores else h for h in history]
        earlier = [x for x in done if x.stage_index < i]
        # a stage starts where the previous one ended; the first, at the losses measured before any
        # training (known once its first round has run)
        before = (done[0].result.eval_before or {}) if done else {}
        start = earlier[-1].eval_losses if earlier else before
        tokens = dict(self.data.domain_tokens)
        for d in self.spec.replay_domains(i):
            tokens.setdefault(d, self.data.domain_tokens.get(source_name(d), 0))
        return Observation(stage_index=i, round_index=r, num_rounds=st.rounds, stage_domains=list(st.domains),
                           replay_domains=self.spec.replay_domains(i), replay_fraction=st.replay.fraction,
                           domain_tokens=tokens, history=history, start_losses=dict(start),
                           reference_losses=dict(reference), seed=self.spec.seed, score_roles=dict(roles or {}))

    def _history(self, done: list[Finished]) -> list[RoundRecord]:
        """The mixer's view of `done`, built incrementally: the committed rounds are the same
        objects from round to round (the controller appends to them), so only the rounds after
        the common prefix are converted, not thousands at every boundary of a long run."""
        src, recs = self._seen
        n, limit = 0, min(len(src), len(done))
        while n < limit and src[n] is done[n]:  # pointer comparisons: microseconds for 5,000 rounds
            n += 1
        recs = recs[:n] + [RoundRecord(x.stage_index, x.round_index, x.weights, x.eval_losses,
                                       x.result.domain_train_losses, x.result.domain_loss_trace) for x in done[n:]]
        self._seen = (list(done), recs)
        return list(recs)

    @staticmethod
    def restore(mixer: Mixer, i: int, done: list[Finished]) -> None:
        """Put a resumed stage's mixer back in the state it had after its last finished round."""
        mine = [x for x in done if x.stage_index == i and x.mixer_state is not None]
        if mine:
            mixer.load_state_dict(mine[-1].mixer_state)

    @staticmethod
    def propose(mixer: Mixer, obs: Observation) -> dict[str, float]:
        return check_weights(mixer.propose(obs), obs.domains, f"stages.{obs.stage_index}.mixer proposal")

    @staticmethod
    def commit(obs: Observation, weights: dict[str, float], result: RoundResult, mixer: str) -> dict[str, Any]:
        """The round's mixing transition (state, action, reward, next state), stored with its commit."""
        return transition(obs, state_features(obs), weights, result, mixer)

    # ---- the round -----------------------------------------------------------------------------
    def plan(self, i: int, r: int, weights: dict[str, float], attempt: int, done: list[Finished],
             size: Callable[[str], DomainSize]) -> RoundPlan:
        """Round r of stage i, attempt `attempt`, starting where the last finished round ended."""
        spec, st = self.spec, self.spec.stages[i]
        first, n = spec.round_bounds(i)[r]
        prev = done[-1].checkpoint if done else None
        return RoundPlan(
            run_id=self.run_id, stage_index=i, round_index=r, attempt=attempt, seed=spec.seed, weights=weights,
            domain_paths=self.domain_paths(), eval_domains=sorted(spec.domains), stage_step_start=first,
            num_steps=n, stage_steps=spec.stage_steps(i), global_step_start=spec.stage_starts()[i] + first,
            schedule=st.schedule, model=spec.model, tokenizer_hash=self.data.tokenizer_hash,
            vocab_size=self.data.vocab_size, seq_len=spec.seq_len, batch_size=spec.batch_size,
            optimizer=spec.optimizer, init_checkpoint=prev,
            load_optimizer=prev is not None and not (r == 0 and st.reset_optimizer),
            checkpoint_dir=self.checkpoint_location(f"s{i}-r{r}-a{attempt}"), eval_batches=spec.eval_batches,
            eval_before=(i == 0 and r == 0), micro_batch_size=spec.micro_batch_size,
            cursors=self.cursors(i, r, weights, n, done, size), log_every=spec.tracking.log_every,
            sample_loss=st.sample_loss, checkpoint_format=spec.checkpoints.format,
            checkpoint_async=spec.checkpoints.format == "sharded" and spec.checkpoints.asynchronous)

    def cursors(self, i: int, r: int, weights: dict[str, float], steps: int, done: list[Finished],
                size: Callable[[str], DomainSize]) -> dict[str, dict[str, Any]]:
        """Start cursors of the round: where the last finished round left every domain.

        Checked before anything runs: the domains' shards are still the ones the cursors count
        (a refilled replay buffer restarts at its epoch 0), and no domain is read past the stage's
        max_epochs."""
        prev = done[-1].result.cursors if done else {}
        sizes = {d: size(d) for d, w in weights.items() if w > 0}
        buffers = {buffer_name(d) for d in self.spec.buffered_domains()}
        cursors = {**prev, **order.start_cursors(prev, sizes, restart_changed=buffers)}
        end = order.end_cursors(cursors, weights, {d: s.n for d, s in sizes.items()}, self.spec.batch_size, steps)
        for d, cap in self.spec.stages[i].max_epochs.items():
            if d in end and order.epochs_used(end[d]) > cap:
                raise DataError(f"stages.{i}.max_epochs.{d}: round {i}.{r} would read domain {d!r} into epoch "
                                f"{order.epochs_used(end[d])} ({sizes[d].n:,} sequences per epoch), past the "
                                f"stage's limit of {cap}; lower the stage's tokens or the domain's weight, "
                                f"or raise max_epochs")
        return cursors

    def lr_segment(self, plan: RoundPlan) -> dict[str, Any]:
        """The schedule and the stage-local steps this round covers (stored with the round)."""
        return {**plan.schedule.model_dump(), "stage_steps": plan.stage_steps, "first": plan.stage_step_start,
                "count": plan.num_steps}

    # ---- between stages ------------------------------------------------------------------------
    def replay_fill(self, i: int, done: list[Finished]) -> list[BufferFill]:
        """After stage i: the buffers of the domains a later stage replays from a buffer, each with
        the cursors the stage read its source between (the last stage, or a domain trained again
        later and never replayed, fills nothing)."""
        later = [j for j in range(i + 1, len(self.spec.stages)) if self.spec.stages[j].replay.buffer is not None]
        wanted = [d for d in self.spec.stages[i].domains if any(d in self.spec.replay_sources(j) for j in later)]
        mine = [x for x in done if x.stage_index == i]
        if not wanted or not mine:
            return []
        before, after = mine[0].plan.cursors, mine[-1].result.cursors
        return [BufferFill(d, self.buffer_folder(d), before.get(d), after.get(d)) for d in wanted]

    def buffer_spec(self, domain: str, i: int):
        """The BufferSpec of the first stage after i that replays `domain` from a buffer."""
        for j in range(i + 1, len(self.spec.stages)):
            st = self.spec.stages[j]
            if st.replay.buffer is not None and domain in self.spec.replay_sources(j):
                return st.replay.buffer
        raise AssertionError(f"no later stage replays {domain!r} from a buffer")
