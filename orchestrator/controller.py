"""The round loop: one run = stages x rounds, the store is the source of truth.

Per round (each transition persisted before the side effect it announces):
  planned (weights, steps, LR segment, data cursor, init checkpoint, mixer state)
  -> running (plan handed to the run's persistent worker group) -> finished (result + checkpoint:
  the commit point)
  -> MLflow (idempotent: a finished round without an MLflow id is logged on resume).
A failed worker is retried from the same plan as a new attempt; a dead controller is resumed
with `cpt runs resume`, which abandons open attempts and continues after the last finished round.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from corpus.names import buffer_name, source_name
from mixers.agent import state_features, transition
from mixers.base import Mixer, MixerConfig, Observation, RoundRecord, build_mixer, check_weights
from orchestrator import checkpoints
from orchestrator.group import GroupFailed, WorkerGroup
from orchestrator.home import Home
from orchestrator.run_tracking import RunTracking
from orchestrator.spec import RunSpec, parse_spec
from store.errors import Cancelled, CptError, DataError, InputError, LeaseLost, Preempted, TrainingError
from store.lease import RunLease
from store.runs import RunStore
from workers.plan import RoundPlan, RoundResult


@contextmanager
def stop_signals(flags: dict[str, bool]):
    """SIGTERM and a first Ctrl-C only set a flag that the round loop acts on at its next check
    (at most poll_s away): an exception raised from a signal handler could land inside a library
    (MLflow, SQLAlchemy) that wraps or swallows it. A second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def term(signum, frame):
        flags["preempted"] = True

    def intr(signum, frame):
        if flags.get("interrupted"):
            raise KeyboardInterrupt
        flags["interrupted"] = True

    previous = signal.signal(signal.SIGTERM, term), signal.signal(signal.SIGINT, intr)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


class WorkerFailed(Exception):
    """The round's worker crashed or raised something unexpected: retried as a new attempt."""


class Reporter(Protocol):
    def round_started(self, plan: RoundPlan, stage: str) -> None: ...
    def progress(self, step: int, total: int, loss: float, lr: float) -> None: ...
    def round_finished(self, plan: RoundPlan, result: RoundResult) -> None: ...
    def message(self, text: str) -> None: ...


class SilentReporter:
    def round_started(self, plan, stage): pass
    def progress(self, step, total, loss, lr): pass
    def round_finished(self, plan, result): pass
    def message(self, text): pass


def create_run(store: RunStore, home: Home, spec: RunSpec, spec_yaml: str) -> str:
    """Record a validated spec as a pending run with its stages."""
    starts = spec.stage_starts()
    stages = [(st.name, starts[i], spec.stage_steps(i), st.rounds) for i, st in enumerate(spec.stages)]
    return store.create_run(spec.name, spec_yaml, spec.model_dump(mode="json"), str(home.runs), stages)


class Controller:
    def __init__(self, store: RunStore, home: Home, run_id: str, reporter: Reporter | None = None,
                 tracking: bool = True, poll_s: float = 0.5):
        self.store, self.home, self.run_id = store, home, run_id
        self.reporter = reporter or SilentReporter()
        run = store.get_run(run_id)
        self.spec: RunSpec = parse_spec(json.dumps(run.spec_json), f"run {run_id} spec")
        self.spec_yaml = run.spec_yaml
        self.workdir = Path(run.workdir)
        self.poll_s = poll_s
        # through self.reporter at call time: the CLI sets its reporter after construction
        self.tracking = RunTracking(store, home, self.spec, run_id, self.workdir, lambda m: self.reporter.message(m),
                                    self._domain_paths, run.mlflow_run_id, enabled=tracking)
        self._signals: dict[str, bool] = {}
        self.group: WorkerGroup | None = None
        self._progress_at = 0.0
        self.persistent_group = True  # False restarts the group every round (benchmarks/scale.py's baseline)
        self.manifests: dict[str, Any] | None = None  # set by a submit that just checked the data

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> str:
        """Drive the run to its end under the run lease; returns the final status."""
        self.lease = RunLease(self.store, self.run_id)
        self.lease.acquire()  # RunBusy (exit 2) if another live controller drives this run
        try:
            return self._run_leased()
        except LeaseLost:
            self.reporter.message(f"run {self.run_id} was taken over by another controller; stopping")
            return "taken over"
        finally:
            self._drop_group(kill=False)  # between rounds: the ranks leave their loop, fit() returns
            self.lease.release()

    def _run_leased(self) -> str:
        from orchestrator import cluster
        from orchestrator.data_check import check_data

        if self.store.get_run(self.run_id).status == "finished":  # checked under the lease: no race
            raise InputError(f"run {self.run_id} is already finished")
        try:
            # a resumed run's data may have changed since it was submitted: check it again
            manifests = self.manifests or check_data(self.spec)
        except CptError as exc:
            if self.store.get_run(self.run_id).status == "pending":  # never leave it looking queued
                self.store.set_run_status(self.run_id, "failed", error=str(exc)[:4000])
            raise
        self._tok = {"hash": next(iter(manifests.values()))["tokenizer_hash"],
                     "vocab": next(iter(manifests.values()))["vocab_size"]}
        self._domain_tokens = {d: m["tokens"]["train"] for d, m in manifests.items()}
        run = self.store.get_run(self.run_id)
        self.store.set_run_status(self.run_id, "running", message="resumed" if run.status != "pending" else None)
        abandoned = self.store.abandon_open_rounds(self.run_id, "abandoned: controller stopped mid-round")
        if abandoned:
            self.reporter.message(f"abandoned {abandoned} unfinished round attempt(s); they re-run as new attempts")
        self.workdir.mkdir(parents=True, exist_ok=True)
        checkpoints.remove_partial(self.workdir, self.reporter.message)
        try:
            ray_info = cluster.connect(self.home, num_cpus=None, run={"run_id": self.run_id,
                                                                       "run_name": self.spec.name})
            self.store.update_run(self.run_id, ray_job_id=ray_info["job_id"])
            with stop_signals(self._signals):  # after ray.init, which installs its own SIGTERM handler
                self._group()  # Ray Train starts the ranks (seconds) while MLflow is set up
                self.tracking.start()  # inside: an unreachable MLflow server fails the run, recorded
                self.tracking.announce(ray_info["dashboard"])
                for i in range(len(self.spec.stages)):
                    self._run_stage(i)
        except LeaseLost:
            raise
        except (Cancelled, KeyboardInterrupt) as exc:
            self.store.set_run_status(self.run_id, "cancelled", message=str(exc) or "Ctrl-C")
            self.tracking.end("cancelled")
            if isinstance(exc, KeyboardInterrupt) or self._signals.get("interrupted"):
                raise Cancelled(f"run {self.run_id} cancelled (Ctrl-C); `cpt runs resume {self.run_id}` "
                                f"continues it") from None
            return "cancelled"
        except Preempted:
            self.store.set_run_status(self.run_id, "interrupted", message="SIGTERM: resumable")
            self.tracking.end("interrupted")
            raise Preempted(f"run {self.run_id} interrupted by SIGTERM; `cpt runs resume {self.run_id}` "
                            f"continues it") from None
        except BaseException as exc:
            msg = exc.args[0] if isinstance(exc, CptError) and exc.args else repr(exc)
            self.store.set_run_status(self.run_id, "failed", error=str(msg)[:4000])
            self.tracking.end("failed")
            raise
        self.store.set_run_status(self.run_id, "finished")
        self.tracking.end("finished")
        return "finished"

    def _run_stage(self, i: int) -> None:
        st = self.spec.stages[i]
        mixer = build_mixer(st.mixer, where=f"stages.{i}.mixer")
        self._reference = self._reference_losses(st.mixer)
        for r, _ in enumerate(self.spec.round_bounds(i)):
            done = self.store.finished_round(self.run_id, i, r)
            if done is not None:
                if done.mixer_state is not None:
                    mixer.load_state_dict(done.mixer_state)
                if done.mlflow_run_id is None:
                    self.tracking.log_round(done.id, i, r, done.weights, RoundResult.from_json(done.result_json),
                                            done.step_start)
                continue
            self.store.set_stage_status(self.run_id, i, "running")
            self._run_round(i, r, mixer)
        self._fill_replay_buffers(i)
        self.store.set_stage_status(self.run_id, i, "finished")

    def _reference_losses(self, mixer: MixerConfig) -> dict[str, float]:
        ref = getattr(mixer, "reference_run", None)  # DoReMi's baseline run
        if not ref:
            return {}
        done = self.store.rounds(ref, status="finished")
        if not done:
            raise InputError(f"mixer.reference_run: run {ref!r} has no finished rounds")
        return done[-1].eval_losses

    def _buffer_folder(self, domain: str) -> Path | str:
        """A domain's replay buffer: in the run's folder, or in its shared storage (checkpoints.uri)."""
        from corpus import fs
        from store.names import check_name, inside

        base = self.spec.checkpoints.uri
        if base is not None and fs.is_remote(base):
            return fs.join(fs.join(fs.join(base, self.run_id), "replay"), check_name(domain, "domain"))
        return inside(self.workdir / "replay", domain)

    def _fill_replay_buffers(self, i: int) -> None:
        """After stage i, add what it trained on to the buffers of domains later stages replay."""
        from corpus.replay import fill_from_stage

        later = [j for j in range(i + 1, len(self.spec.stages)) if self.spec.stages[j].replay.buffer is not None]
        # only what a later stage replays from a buffer (the last stage, or a domain trained again
        # last, fills nothing)
        wanted = [d for d in self.spec.stages[i].domains if any(d in self.spec.replay_sources(j) for j in later)]
        if not wanted:
            return
        buf_spec = self.spec.stages[later[0]].replay.buffer
        done = [r for r in self.store.rounds(self.run_id, status="finished") if r.stage_index == i]
        before = RoundPlan.from_json(done[0].plan_json).cursors  # where the stage started reading
        after = RoundResult.from_json(done[-1].result_json).cursors
        for d in wanted:
            buf = fill_from_stage(self._buffer_folder(d), d, self.spec.domains[d], before.get(d), after.get(d),
                                  buf_spec.model_dump(), self.spec.seq_len, self.spec.seed, i)
            self.reporter.message(f"replay buffer {d}: {buf.tokens():,} tokens ({buf.policy}, "
                                  f"{buf.seen:,} sequences seen)")

    def _domain_paths(self) -> dict[str, str]:
        paths = dict(self.spec.domains)
        for d in self.spec.buffered_domains():
            paths[buffer_name(d)] = str(self._buffer_folder(d))
        return paths

    def _observation(self, i: int, r: int) -> Observation:
        st = self.spec.stages[i]
        done = self.store.rounds(self.run_id, status="finished")
        history = []
        for x in done:
            res = json.loads(x.result_json or "{}")
            history.append(RoundRecord(x.stage_index, x.round_index, x.weights, x.eval_losses or {},
                                       res.get("domain_train_losses", {}), res.get("domain_loss_trace", {})))
        earlier = [x for x in done if x.stage_index < i]
        if earlier:
            start = earlier[-1].eval_losses
        else:
            start = json.loads(done[0].result_json).get("eval_before") or {} if done else {}
        tokens = dict(self._domain_tokens)
        for d in self.spec.replay_domains(i):
            tokens.setdefault(d, self._domain_tokens.get(source_name(d), 0))
        return Observation(stage_index=i, round_index=r, num_rounds=st.rounds, stage_domains=list(st.domains),
                           replay_domains=self.spec.replay_domains(i), replay_fraction=st.replay.fraction,
                           domain_tokens=tokens, history=history, start_losses=start,
                           reference_losses=self._reference, seed=self.spec.seed)

    def _check_control(self, when: str) -> None:
        """Stop if a signal came, the user cancelled, or another controller took the run over."""
        if self._signals.get("preempted"):
            raise Preempted(f"SIGTERM {when}")
        if self._signals.get("interrupted"):
            raise Cancelled(f"Ctrl-C {when}")
        if self.lease.lost.is_set():
            raise LeaseLost(f"lease lost {when}")
        if self.store.cancel_requested(self.run_id):
            raise Cancelled(f"cancelled {when}")

    def _run_round(self, i: int, r: int, mixer: Mixer) -> None:
        self._check_control("before round start")
        obs = self._observation(i, r)
        state = state_features(obs)
        weights = check_weights(mixer.propose(obs), obs.domains, f"stages.{i}.mixer proposal")
        plan = self._plan(i, r, weights, attempt=self.store.next_attempt(self.run_id, i, r))
        st = self.spec.stages[i]
        lr_segment = {**st.schedule.model_dump(), "stage_steps": plan.stage_steps,
                      "first": plan.stage_step_start, "count": plan.num_steps}
        max_attempts = self.spec.resources.max_attempts
        while True:
            round_id = self.store.plan_round(plan, lr_segment, mixer.state_dict())
            try:
                result = self._execute(round_id, plan, st.name)
                break
            except WorkerFailed as exc:  # worker died or Ray lost it: retry from the same plan
                self.store.fail_round(round_id, f"{type(exc).__name__}: {exc}"[:4000])
                if plan.attempt >= max_attempts:
                    raise TrainingError(f"stage {i} round {r} failed {plan.attempt} times; last error: "
                                        f"{type(exc).__name__}: {str(exc)[:500]}") from exc
                self.reporter.message(f"round {i}.{r} attempt {plan.attempt} failed ({type(exc).__name__}); "
                                      f"retrying")
                plan = self._plan(i, r, weights, attempt=plan.attempt + 1)
        self.store.finish_round(round_id, result, transition(obs, state, weights, result, mixer.name))
        if not self.persistent_group:
            self._drop_group(kill=False)
        checkpoints.prune(self.store, self.spec, self.workdir, self.run_id, self.reporter.message)
        self.reporter.round_finished(plan, result)
        self.tracking.round_finished(round_id, i, r, weights, result, plan.global_step_start)

    def _group(self) -> WorkerGroup:
        """The run's worker group, started with the run and kept across rounds and stages."""
        if self.group is None:
            self.group = WorkerGroup(self.run_id, self.spec.resources.model_dump(), self.workdir / "ray-train",
                                     report=self.reporter.message)
            self.group.start()
        return self.group

    def _drop_group(self, kill: bool) -> None:
        if self.group is not None:
            group, self.group = self.group, None
            group.kill() if kill else group.stop()

    def _execute(self, round_id: int, plan: RoundPlan, stage_name: str) -> RoundResult:
        self.store.start_round(round_id)
        try:  # from here on every way out (a signal included) records the attempt's end
            self.reporter.round_started(plan, stage_name)
            t0 = time.perf_counter()
            self._progress_at = 0.0  # a round's first live record always reaches the store
            group = self._group()
            group.submit(plan)
            while True:
                records, result = group.poll(self.poll_s)
                for p in records:
                    step = plan.global_step_start - plan.stage_step_start + p["step"]
                    self.reporter.progress(step, self.spec.total_steps(), p["loss"], p["lr"])
                if records:
                    self._on_progress(round_id, plan, records)
                if result is not None:
                    return dataclasses.replace(result, round_s=time.perf_counter() - t0)
                self._check_control("mid-round")
        except GroupFailed as exc:  # a rank died or Ray lost it: a new group retries from the last commit
            self._drop_group(kill=True)
            raise WorkerFailed(str(exc)) from None
        except BaseException as exc:
            # Cancel, Ctrl-C, SIGTERM, a worker's own error or a controller bug: stop the group now.
            self._drop_group(kill=True)
            if isinstance(exc, LeaseLost):  # the new owner abandons this attempt itself
                raise
            status = "cancelled" if isinstance(exc, Cancelled | KeyboardInterrupt) else "failed"
            self.store.fail_round(round_id, f"{type(exc).__name__}: {exc}"[:4000], status=status)
            raise

    def _cursors(self, i: int, r: int, weights: dict[str, float], steps: int) -> dict[str, dict[str, Any]]:
        """Start cursors of the round: where the last finished round left every domain.

        Checked before anything runs: the domains' shards are still the ones the cursors count
        (a refilled replay buffer restarts at its epoch 0), and no domain is read past the stage's
        max_epochs."""
        from corpus.order import epochs_used
        from corpus.sampler import RoundSampler, SequenceSource, start_cursors

        done = self.store.rounds(self.run_id, status="finished")
        prev = RoundResult.from_json(done[-1].result_json).cursors if done else {}
        paths = self._domain_paths()
        sources = {d: SequenceSource.open(d, paths[d], self.spec.seq_len) for d, w in weights.items() if w > 0}
        buffers = {buffer_name(d) for d in self.spec.buffered_domains()}
        cursors = {**prev, **start_cursors(prev, sources, restart_changed=buffers)}
        end = RoundSampler(sources, weights, cursors, self.spec.batch_size, steps, self.spec.seed, i, r).end_cursors()
        for d, cap in self.spec.stages[i].max_epochs.items():
            if d in end and epochs_used(end[d]) > cap:
                raise DataError(f"stages.{i}.max_epochs.{d}: round {i}.{r} would read domain {d!r} into epoch "
                                f"{epochs_used(end[d])} ({sources[d].n:,} sequences per epoch), past the "
                                f"stage's limit of {cap}; lower the stage's tokens or the domain's weight, "
                                f"or raise max_epochs")
        return cursors

    def _on_progress(self, round_id: int, plan: RoundPlan, records: list[dict[str, Any]]) -> None:
        """Live records: to MLflow through the background logger (never blocks), and the latest one
        to the store at most once a second (what `cpt runs show` / `watch` read mid-round)."""
        self.tracking.progress(plan, records)
        now = time.monotonic()
        if now - self._progress_at >= 1.0:
            last = records[-1]
            self.store.set_round_progress(round_id, {
                **{k: last[k] for k in ("step", "loss", "lr", "tokens_per_s", "grad_norm", "t")},
                "stage_steps": plan.stage_steps, "round_first": plan.stage_step_start, "round_steps": plan.num_steps,
                "global_step": plan.global_step_start - plan.stage_step_start + last["step"]})
            self._progress_at = now

    def _plan(self, i: int, r: int, weights: dict[str, float], attempt: int) -> RoundPlan:
        spec, st = self.spec, self.spec.stages[i]
        first, n = spec.round_bounds(i)[r]
        prev = checkpoints.latest(self.store, self.run_id)
        ckpt = checkpoints.location(spec, self.workdir, self.run_id, f"s{i}-r{r}-a{attempt}")
        return RoundPlan(
            run_id=self.run_id, stage_index=i, round_index=r, attempt=attempt, seed=spec.seed, weights=weights,
            domain_paths=self._domain_paths(), eval_domains=sorted(spec.domains), stage_step_start=first,
            num_steps=n, stage_steps=spec.stage_steps(i), global_step_start=spec.stage_starts()[i] + first,
            schedule=st.schedule, model=spec.model, tokenizer_hash=self._tok["hash"],
            vocab_size=self._tok["vocab"], seq_len=spec.seq_len, batch_size=spec.batch_size,
            optimizer=spec.optimizer, init_checkpoint=prev,
            load_optimizer=prev is not None and not (r == 0 and st.reset_optimizer),
            checkpoint_dir=str(ckpt), eval_batches=spec.eval_batches,
            eval_before=(i == 0 and r == 0), micro_batch_size=spec.micro_batch_size,
            cursors=self._cursors(i, r, weights, n), log_every=spec.tracking.log_every,
            sample_loss=st.sample_loss)
