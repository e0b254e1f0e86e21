"""The driver: one run = stages x rounds under a lease, the store is the source of truth.

The planner (orchestrator/planner.py) decides what each round is; this module does what has
side effects, each transition persisted before the side effect it announces:
  planned (weights, steps, LR segment, data cursors, init checkpoint, mixer state)
  -> running (plan handed to the run's persistent worker group) -> finished (result + checkpoint:
  the commit point) -> callbacks (live display, MLflow, plots; a round MLflow missed is logged later).
A failed attempt is retried from the same plan as a new attempt when the `RetryPolicy` says so; a
dead controller is resumed with `cpt runs resume`, which abandons open attempts and continues
after the last finished round.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from mixers.base import build_mixer
from orchestrator import checkpoints
from orchestrator.callbacks import Reporter, RoundCallback, SilentReporter, StoreProgress, ToReporter
from orchestrator.commits import Commits, Pending, WriteLost
from orchestrator.evals import Evals
from orchestrator.group import GroupFailed, Groups, OwnGroups, WorkerGroup
from orchestrator.home import Home
from orchestrator.planner import DataInfo, DomainSize, Finished, RoundPlanner
from orchestrator.run_tracking import RunTracking
from orchestrator.signals import stop_signals
from orchestrator.spec import RunSpec, parse_spec
from store.errors import Cancelled, CptError, InputError, LeaseLost, Preempted, TrainingError
from store.lease import RunLease
from store.records import RoundPlan, RoundResult
from store.runs import RunStore

__all__ = ["Controller", "Reporter", "RetryPolicy", "SilentReporter"]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Whether a failed attempt of a round runs again (Ray Train's FailurePolicy, per round).

    A lost rank, node or mailbox (GroupFailed) is retried on a new group from the last commit,
    up to `max_attempts` attempts; cpt's own errors from the ranks (bad data, a corrupt checkpoint,
    a non-finite loss) are deterministic and fail the run at once, as does anything else."""

    max_attempts: int

    def retry(self, attempt: int, error: BaseException) -> bool:
        return isinstance(error, GroupFailed) and attempt < self.max_attempts


class Controller:
    """Drives one run to its end: lease, statuses, the Ray connection, signals, the worker group
    and the round callbacks around the planner's rounds."""

    def __init__(self, store: RunStore, home: Home, run_id: str, reporter: Reporter | None = None,
                 tracking: bool = True, poll_s: float = 0.5, groups: Groups | None = None):
        # the lease is taken through the plain store; every other write goes through the fenced
        # one, which refuses to write once another controller holds the lease
        self._lease_store, self.store = store, store.fenced(run_id)
        self.home, self.run_id = home, run_id
        self.reporter = reporter or SilentReporter()  # the CLI may replace it after construction
        run = store.get_run(run_id)
        self.spec: RunSpec = parse_spec(json.dumps(run.spec_json), f"run {run_id} spec")
        self.workdir = Path(run.workdir)
        self.poll_s = poll_s
        self.retry = RetryPolicy(self.spec.resources.max_attempts)
        self.groups = groups or OwnGroups()
        self.tracking = RunTracking(self.store, home, self.spec, run_id, self.workdir, self._message,
                                    lambda: self.planner.domain_paths() if self.planner else self.spec.domains,
                                    run.mlflow_run_id, enabled=tracking)
        self.evals = Evals(self.store, self.spec, run_id, self.tracking, self._message)
        # evals before tracking: at the run's end the last scores reach MLflow before its run closes
        self.callbacks: list[RoundCallback] = [ToReporter(lambda: self.reporter, self.spec.total_steps()),
                                               StoreProgress(self.store), self.evals, self.tracking]
        self.planner: RoundPlanner | None = None
        self.commits: Commits | None = None
        self.group: WorkerGroup | None = None
        self.workers: int | None = None  # ranks of the last group started (an elastic group's size varies)
        self.manifests: dict[str, Any] | None = None  # set by a submit that just checked the data
        self.signals: dict[str, bool] = {}  # what SIGTERM / Ctrl-C set (shared by `cpt agent explore`'s controllers)

    def _message(self, text: str) -> None:
        self.reporter.message(text)

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> str:
        """Drive the run to its end under the run lease; returns the final status."""
        self.lease = RunLease(self._lease_store, self.run_id)
        self.lease.acquire()  # RunBusy (exit 2) if another live controller drives this run
        self.store.arm(self.lease.owner)
        try:
            return self._run_leased()
        except LeaseLost:
            self.tracking.abandon()
            self._message(f"run {self.run_id} was taken over by another controller; stopping")
            return "taken over"
        finally:
            self._drop_group(kill=False)  # between rounds: the ranks leave their loop, fit() returns
            self.lease.release()

    def _start(self) -> None:
        """Checks under the lease, the planner, the run's status, and what a dead controller left."""
        from orchestrator.data_check import check_data

        run = self.store.get_run(self.run_id)
        if run.status == "finished":  # checked under the lease: no race
            raise InputError(f"run {self.run_id} is already finished")
        try:
            # a resumed run's data may have changed since it was submitted: check it again
            manifests = self.manifests or check_data(self.spec)
        except CptError as exc:
            if run.status == "pending":  # never leave it looking queued
                self.store.set_run_status(self.run_id, "failed", error=str(exc)[:4000])
            raise
        self.planner = RoundPlanner(self.spec, self.run_id, self.workdir, DataInfo.from_manifests(manifests),
                                    lambda name: checkpoints.location(self.spec, self.workdir, self.run_id, name))
        self.commits = Commits(self.store, self.spec, self.workdir, self.run_id, self.planner, self.callbacks,
                               self._message, self._after_commit, self.evals.protected)
        self.store.set_run_status(self.run_id, "running", message="resumed" if run.status != "pending" else None)
        abandoned = self.store.abandon_open_rounds(self.run_id, "abandoned: controller stopped mid-round")
        if abandoned:
            self._message(f"abandoned {abandoned} unfinished round attempt(s); they re-run as new attempts")
        self.workdir.mkdir(parents=True, exist_ok=True)
        checkpoints.remove_partial(self.spec, self.workdir, self.run_id, self._message)

    def _run_leased(self) -> str:
        from orchestrator import cluster

        self._start()
        try:
            ray_info = cluster.connect(self.home, num_cpus=None, run={"run_id": self.run_id,
                                                                       "run_name": self.spec.name})
            self.store.update_run(self.run_id, ray_job_id=ray_info["job_id"])
            with stop_signals(self.signals):  # after ray.init, which installs its own SIGTERM handler
                self._group()  # Ray Train starts the ranks (seconds) while MLflow is set up
                self.tracking.start()  # inside: an unreachable MLflow server fails the run, recorded
                self.tracking.announce(ray_info["dashboard"])
                self.evals.resume(self.commits.committed(), checkpoints.kept)
                for i in range(len(self.spec.stages)):
                    self._run_stage(i)
                if self.evals.jobs:  # the run is finished when its last scores are recorded; the ranks'
                    self._stop_group_for_evals()  # CPUs/GPUs go to the evaluations still waiting for them
                    self._drop_group(kill=False)  # (a group kept for the next run keeps them: stopped if needed)
                    self.evals.poll(timeout=None)
        except LeaseLost:
            raise
        except BaseException as exc:
            return self._stopped(exc)
        self.store.set_run_status(self.run_id, "finished")
        self._run_ended("finished")
        return "finished"

    def _stopped(self, exc: BaseException) -> str:
        """Record how the run stopped (cancelled, interrupted, failed) and say how to continue."""
        rid = self.run_id
        if isinstance(exc, Cancelled | KeyboardInterrupt):
            self.store.set_run_status(rid, "cancelled", message=str(exc) or "Ctrl-C")
            self._run_ended("cancelled")
            if isinstance(exc, KeyboardInterrupt) or self.signals.get("interrupted"):
                raise Cancelled(f"run {rid} cancelled (Ctrl-C); `cpt runs resume {rid}` continues it") from None
            return "cancelled"
        if isinstance(exc, Preempted):
            self.store.set_run_status(rid, "interrupted", message="SIGTERM: resumable")
            self._run_ended("interrupted")
            raise Preempted(f"run {rid} interrupted by SIGTERM; `cpt runs resume {rid}` continues it") from None
        msg = exc.args[0] if isinstance(exc, CptError) and exc.args else repr(exc)
        self.store.set_run_status(rid, "failed", error=str(msg)[:4000])
        self._run_ended("failed")
        raise exc

    def _run_ended(self, status: str) -> None:
        for cb in self.callbacks:
            cb.run_ended(status)

    # ---- stages and rounds ----------------------------------------------------------------------
    def _run_stage(self, i: int) -> None:
        st = self.spec.stages[i]
        mixer = build_mixer(st.mixer, where=f"stages.{i}.mixer")
        reference = self._reference_losses(getattr(st.mixer, "reference_run", None))
        while True:
            try:
                committed = self.commits.committed()
                self.planner.restore(mixer, i, committed)  # a resumed stage continues the same policy
                # two reads, not one per round: a resume of a 5,000-round run starts in seconds
                done = {(x.stage_index, x.round_index) for x in committed}
                unlogged = {(x.stage_index, x.round_index): x for x in self.store.unlogged_rounds(self.run_id)}
                for r, _ in enumerate(self.spec.round_bounds(i)):
                    if (i, r) in done:  # committed before a resume
                        if (row := unlogged.get((i, r))) is not None:
                            self.tracking.log_round(row.id, row.plan, row.result)
                        continue
                    self.store.set_stage_status(self.run_id, i, "running")
                    self._rescale()
                    self._run_round(i, r, mixer, reference, self.commits.done())
                self._drain()  # the stage's last checkpoint is durable before its buffers fill
                break
            except WriteLost:  # a round whose checkpoint never became durable re-runs, then what followed it
                mixer = build_mixer(st.mixer, where=f"stages.{i}.mixer")
        self._fill_replay_buffers(i)
        self.store.set_stage_status(self.run_id, i, "finished")

    def _reference_losses(self, ref: str | None) -> dict[str, float]:
        """DoReMi's baseline: the final validation losses of another run in the store."""
        if not ref:
            return {}
        done = self.store.rounds(ref, status="finished")
        if not done:
            raise InputError(f"mixer.reference_run: run {ref!r} has no finished rounds")
        return done[-1].eval_losses

    def _fill_replay_buffers(self, i: int) -> None:
        """After stage i, add what it trained on to the buffers of domains later stages replay."""
        from corpus.replay import fill_from_stage

        for job in self.planner.replay_fill(i, self.commits.committed()):
            spec = self.planner.buffer_spec(job.domain, i)
            buf = fill_from_stage(job.folder, job.domain, self.spec.domains[job.domain], job.before, job.after,
                                  spec.model_dump(), self.spec.seq_len, self.spec.seed, i,
                                  lambda: self._check_control("while filling replay buffers"))
            self._message(f"replay buffer {job.domain}: {buf.tokens():,} tokens ({buf.policy}, "
                          f"{buf.seen:,} sequences seen)")

    def _size(self, domain: str) -> DomainSize:
        from corpus.sampler import SequenceSource

        path = self.planner.domain_paths()[domain]
        src = SequenceSource.open(domain, path, self.spec.seq_len)
        return DomainSize(src.n, src.data_id, path)

    def _check_control(self, when: str) -> None:
        """Stop if a signal came, the user cancelled, or another controller took the run over."""
        if self.signals.get("preempted"):
            raise Preempted(f"SIGTERM {when}")
        if self.signals.get("interrupted"):
            raise Cancelled(f"Ctrl-C {when}")
        if self.lease.lost.is_set():
            raise LeaseLost(f"lease lost {when}")
        if self.store.cancel_requested(self.run_id):
            raise Cancelled(f"cancelled {when}")

    def _run_round(self, i: int, r: int, mixer, reference: dict[str, float], done: list[Finished]) -> None:
        self._check_control("before round start")
        planner = self.planner
        if getattr(mixer.config, "wait_for_evals", False) and self.spec.evals and done:
            self._wait_for_evals(mixer.name)
        obs = planner.observation(i, r, done, reference, self.evals.scores, self.evals.roles())
        weights = planner.propose(mixer, obs)
        attempt = self.store.next_attempt(self.run_id, i, r)
        while True:
            plan = planner.plan(i, r, weights, attempt, done, self._size)
            round_id = self.store.plan_round(plan, planner.lr_segment(plan), mixer.state_dict())
            try:
                result, seq = self._execute(round_id, plan, self.spec.stages[i].name)
                break
            except GroupFailed as exc:  # a rank died or Ray lost it
                self.store.fail_round(round_id, f"{type(exc).__name__}: {exc}"[:4000])
                if not self.retry.retry(attempt, exc):
                    raise TrainingError(f"stage {i} round {r} failed {attempt} times; last error: "
                                        f"{type(exc).__name__}: {str(exc)[:500]}") from exc
                self._message(f"round {i}.{r} attempt {attempt} failed ({type(exc).__name__}); retrying")
                if self.commits.pending is not None:  # its write died with the group: it re-runs first
                    self.commits.lose(f"its checkpoint write was lost with the group ({type(exc).__name__})")
                    raise WriteLost() from exc
                attempt += 1
        self.commits.add(Pending(round_id, plan, result, obs, weights, mixer.name, mixer.state_dict(), seq))

    def _wait_for_evals(self, mixer: str) -> None:
        """A mixer that reads downstream scores gets the last round's: its checkpoint is committed
        (which launches its evaluations), then they are waited for; the wait is an event."""
        t0 = time.perf_counter()
        self._drain()
        if short := self._stop_group_for_evals():
            self.store.add_event(self.run_id, f"an evaluation needs {short}: the worker group was stopped for "
                                              f"the wait (give `evals:` resources beside it to keep it between rounds)")
        self.evals.poll(timeout=None)
        waited = time.perf_counter() - t0
        if waited > 0.5:
            self.store.add_event(self.run_id, f"waited {waited:.1f} s for the last round's evaluations (mixer "
                                              f"{mixer} reads their scores)")

    def _stop_group_for_evals(self) -> str | None:
        """Stop the worker group (never pooled) when an evaluation still to run needs CPUs or GPUs
        that the group holds: waited for beside the ranks it would never start. Returns what it needs."""
        if self.group is None or not self.evals.jobs:
            return None
        res = self.group.res
        short = self.evals.starved({"CPU": res.workers * res.cpus_per_worker, "GPU": res.workers * res.gpus_per_worker})
        if short:
            group, self.group = self.group, None
            group.stop()  # the next round starts a new one from the last commit
        return short

    def _drain(self) -> None:
        """Wait until the pending round's checkpoint is durable and commit it (a stage's end)."""
        def poll(seq: int):
            try:
                return self._group().poll(self.poll_s, saving=seq)[2]
            except GroupFailed as exc:
                self._drop_group(kill=True)
                self.commits.lose(f"its checkpoint write was lost with the group ({type(exc).__name__})")
                raise WriteLost() from exc

        self.commits.drain(poll)

    # ---- the worker group ------------------------------------------------------------------------
    def _after_commit(self) -> None:
        if not self.groups.persistent:  # a benchmark's baseline: a new group every round
            self._drop_group(kill=False)

    def _group(self) -> WorkerGroup:
        """The run's worker group, started with the run and kept across rounds and stages."""
        if self.group is None:
            res = self._sized()
            if res.workers != self.workers:
                if self.workers is not None:
                    self.store.add_event(self.run_id, f"elastic: {self.workers} -> {res.workers} workers")
                    self._message(f"elastic: the group now has {res.workers} of up to {self.spec.resources.workers} "
                                  f"workers")
                self.workers = res.workers
            self.group = self.groups.get(self.run_id, res, self.workdir / "ray-train", self._message)
        return self.group

    def _sized(self):
        """The resources of the next group: the spec's, or for an elastic group (`workers: {min,
        max}`) the most ranks the cluster's alive nodes hold now. cpt sizes each group itself rather
        than through Ray Train's elastic ScalingConfig: Ray Train resizes whenever capacity changes,
        restarting every rank mid-round, where cpt resizes only between rounds (a round keeps one
        shape from its checkpoint to the next) and only to sizes the global batch divides over."""
        res = self.spec.resources
        if not res.elastic:
            return res
        import ray

        from orchestrator.placement import elastic_size

        return elastic_size(res, ray.cluster_resources(), lambda n: self.spec.batch_problem(n) is None)

    def _rescale(self) -> None:
        """Between rounds: an elastic group that shrank restarts larger once the cluster has room
        again (the new group restores from the last commit, so a pending write is drained first)."""
        if self.group is None or not self.spec.resources.elastic or self.workers >= self.spec.resources.workers:
            return
        if self._sized().workers > self.workers:
            self._drain()
            self._drop_group(kill=False)

    def _drop_group(self, kill: bool) -> None:
        if self.group is not None:
            group, self.group = self.group, None
            self.groups.release(group, kill)

    def _execute(self, round_id: int, plan: RoundPlan, stage_name: str) -> tuple[RoundResult, int]:
        self.store.start_round(round_id)
        try:  # from here on every way out (a signal included) records the attempt's end
            for cb in self.callbacks:
                cb.round_started(plan, stage_name)
            t0 = time.perf_counter()
            group = self._group()
            seq = group.submit(plan)
            while True:
                pending = self.commits.pending
                records, result, saved = group.poll(self.poll_s, pending.seq if pending else None)
                if saved is not None:  # the previous round's checkpoint is durable: its commit
                    self.commits.settle(saved)
                if records:
                    for cb in self.callbacks:
                        cb.progress(round_id, plan, records)
                if result is not None:
                    return dataclasses.replace(result, round_s=time.perf_counter() - t0), seq
                self._check_control("mid-round")
        except GroupFailed:  # a new group retries from the last commit (if the policy says so)
            self._drop_group(kill=True)
            raise
        except BaseException as exc:
            # Cancel, Ctrl-C, SIGTERM, a worker's own error or a controller bug: stop the group now.
            self._drop_group(kill=True)
            if isinstance(exc, LeaseLost):  # the new owner abandons this attempt itself
                raise
            status = "cancelled" if isinstance(exc, Cancelled | KeyboardInterrupt) else "failed"
            self.store.fail_round(round_id, f"{type(exc).__name__}: {exc}"[:4000], status=status)
            self.commits.lose(f"stopped before its checkpoint was durable ({type(exc).__name__}); it re-runs")
            raise
