"""The run's worker group: a Ray Train `TorchTrainer` whose ranks stay alive across rounds.

The controller starts one group per run (lazily, at the first round) and hands it each round's
plan through a mailbox actor; the ranks (workers/train.py) train it, rank 0 reports the result
and progress, and they wait for the next plan with model and optimizer in memory. `fit()` runs in
a background thread for the life of the group: it returns when the controller says stop, or
raises when Ray Train sees a rank die (then the controller builds a new group from the last
committed checkpoint and re-runs the round as a new attempt). Ray Train owns process-group
setup, placement, `storage_path` and failure detection; the failure policy is 0 retries because
retrying from the store, as a new attempt, is the controller's job.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.placement import check_fits
from store.configs import Resources
from store.errors import CptError, first_line
from store.records import RoundPlan, RoundResult


class GroupFailed(Exception):
    """A rank died or Ray Train gave up on the group: the round is retried on a new group."""


def _mailbox_class():
    import ray

    @ray.remote(num_cpus=0, max_concurrency=64)
    class Mailbox:
        """Plans in, results and progress out; the only channel between controller and ranks."""

        def __init__(self):
            import asyncio

            self.plans: list[RoundPlan] = []
            self.outcomes: dict[int, tuple] = {}
            self.saves: dict[int, tuple[float | None, str | None]] = {}  # plan -> (write seconds, error)
            self.progress_log: dict[int, list[dict]] = {}
            self.ranks: dict[int, tuple[int, Any]] = {}
            self.stopped = False
            self.cond = asyncio.Condition()

        async def submit(self, plan: RoundPlan) -> int:
            async with self.cond:
                self.plans.append(plan)
                self.cond.notify_all()
                return len(self.plans) - 1

        async def stop(self) -> None:
            async with self.cond:
                self.stopped = True
                self.cond.notify_all()

        async def next_plan(self, seq: int):
            async with self.cond:
                await self.cond.wait_for(lambda: self.stopped or len(self.plans) > seq)
                return None if self.stopped else (self.plans[seq], seq)

        async def register(self, rank: int, pid: int, actor) -> None:
            self.ranks[rank] = (pid, actor)

        async def report(self, seq: int, result, error: str | None, kind: str | None) -> None:
            async with self.cond:
                if seq not in self.outcomes or error is not None and self.outcomes[seq][1] is None:
                    self.outcomes[seq] = (result, error, kind)  # the first failure of any rank wins
                self.cond.notify_all()

        async def saved(self, seq: int, write_s: float | None, error: str | None) -> None:
            """Plan `seq`'s checkpoint, written after its result (an asynchronous save), is durable or failed."""
            async with self.cond:
                self.saves[seq] = (write_s, error)
                self.cond.notify_all()

        async def progress(self, record: dict) -> None:
            async with self.cond:
                self.progress_log.setdefault(len(self.plans) - 1, []).append(record)
                self.cond.notify_all()

        async def poll(self, seq: int, since: int, timeout: float, saving: int | None = None):
            """New progress of plan `seq`, its outcome, and whether plan `saving`'s checkpoint is
            durable; waits up to `timeout` for any of them (no busy polling, so a round's end is seen
            the moment rank 0 reports it)."""
            import asyncio

            def news() -> bool:
                return (seq in self.outcomes or len(self.progress_log.get(seq, [])) > since
                        or (saving is not None and saving in self.saves))

            async with self.cond:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.cond.wait_for(news), timeout)
                saved = self.saves.get(saving) if saving is not None else None
                return self.progress_log.get(seq, [])[since:], self.outcomes.get(seq), saved

        async def members(self) -> dict[int, tuple[int, Any]]:
            return dict(self.ranks)

    return Mailbox


class WorkerGroup:
    """One Ray Train worker group for one run, alive across rounds and stages."""

    def __init__(self, run_id: str, resources: Resources, storage: Path,
                 report: Callable[[str], None] | None = None):
        self.run_id, self.res, self.storage, self.report = run_id, resources, storage, report
        self.name = f"cpt-{run_id}-{uuid.uuid4().hex[:6]}"
        self.error: BaseException | None = None
        self.mailbox = None
        self._thread: threading.Thread | None = None
        self.seq: int | None = None
        self._seen = 0

    def start(self) -> None:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from orchestrator.torch_backend import NodeBoundTorchConfig
        from workers.train import train_loop

        check_fits(self.res, self.report)
        n = self.res.workers
        # the mailbox lives on the controller's own node (as Ray Train's controller does): it shares
        # the controller's fate, never a worker node's, so losing a node costs ranks, not the channel
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.mailbox = _mailbox_class().options(name=f"{self.name}-mailbox", scheduling_strategy=here).remote()
        trainer = TorchTrainer(
            train_loop, train_loop_config={"mailbox": self.mailbox, "resources": self.res},
            scaling_config=ScalingConfig(num_workers=n, use_gpu=self.res.uses_gpu,
                                         resources_per_worker=self.res.per_worker(),
                                         placement_strategy=self.res.placement.upper()),
            run_config=RunConfig(name=self.name, storage_path=str(self.storage),
                                 failure_config=FailureConfig(max_failures=0)),
            torch_config=NodeBoundTorchConfig(backend="nccl" if self.res.uses_gpu else "gloo"))
        self._thread = threading.Thread(target=self._fit, args=(trainer,), name=self.name, daemon=True)
        self._thread.start()
        ray.get(self.mailbox.members.remote())  # the mailbox is up before the first plan goes in

    def _fit(self, trainer) -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # a rank died, placement failed, ...: the controller decides
            self.error = exc

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, plan: RoundPlan) -> int:
        """Hand the ranks a plan; returns its sequence number (what `poll(saving=...)` names)."""
        if not self.alive:
            raise GroupFailed(self._why())
        self.seq, self._seen = self._ask(self.mailbox.submit.remote(plan)), 0
        return self.seq

    def poll(self, timeout: float, saving: int | None = None) -> tuple[list[dict], RoundResult | None, tuple | None]:
        """New progress records, the result once there is one, and (write seconds, error) once plan
        `saving`'s asynchronous checkpoint is durable or failed. GroupFailed if the group died; the
        worker's own CptError (e.g. a corrupt checkpoint) if the round failed deterministically."""
        records, outcome, saved = self._ask(self.mailbox.poll.remote(self.seq, self._seen, timeout, saving))
        self._seen += len(records)
        if outcome is not None:
            result, error, kind = outcome
            if error is not None:
                import store.errors as errors

                cls = getattr(errors, kind or "", None)
                raise (cls if isinstance(cls, type) and issubclass(cls, CptError) else errors.TrainingError)(error)
            return records, result, saved
        if saved is None and not self.alive:
            raise GroupFailed(self._why())
        return records, None, saved

    @staticmethod
    def _ask(ref):
        """The mailbox's answer; its node or worker gone counts as the group dying (a retry, not a crash)."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            raise GroupFailed(f"the group's mailbox was lost: {type(exc).__name__}: {str(exc)[:300]}") from None

    def pids(self) -> dict[int, int]:
        import ray

        return {r: pid for r, (pid, _) in ray.get(self.mailbox.members.remote()).items()}

    def _why(self) -> str:
        """One line for the store: Ray Train's error and, per failed rank, the rank's own exception
        (Ray's message starts "Training failed due to worker errors:" and puts the cause below)."""
        exc = self.error
        if exc is None:
            return "worker group stopped"
        failures = getattr(exc, "worker_failures", None) or {}
        if failures:
            ranks = "; ".join(f"rank {r}: {type(e).__name__}: {first_line(e)}" for r, e in sorted(failures.items()))
            return f"{type(exc).__name__}: {ranks}"[:1500]
        return f"{type(exc).__name__}: {first_line(exc)}"

    def stop(self, timeout: float = 30) -> None:
        """Let the ranks leave their loop and fit() return; kill what does not within `timeout`."""
        import ray

        if self.mailbox is None:
            return
        with contextlib.suppress(Exception):
            ray.get(self.mailbox.stop.remote(), timeout=10)
        if self._thread is not None:
            self._thread.join(timeout)
        if self.alive:
            self.kill()
        else:
            ray.kill(self.mailbox)

    def kill(self) -> None:
        """Stop now (cancel, SIGTERM, a retry): every rank is killed, Ray Train's fit() then ends."""
        import ray

        try:
            members = ray.get(self.mailbox.members.remote(), timeout=5)
        except Exception:
            members = {}
        for _, actor in members.values():
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if self._thread is not None:
            # Ray Train notices the dead ranks and ends fit() by itself; the caller need not wait for
            # it (a cancel or SIGTERM must stop within seconds; the thread is a daemon)
            self._thread.join(5)
        with contextlib.suppress(Exception):
            ray.kill(self.mailbox)


class Groups:
    """Where a controller gets its worker group: `get` one for a run, `release` it after (kill=True
    when it failed, was cancelled or must not be reused)."""

    persistent = True
    """Keep the group across the run's rounds (False: a new group every round, a benchmark's baseline)."""

    def get(self, run_id: str, res: Resources, storage: Path, report: Callable[[str], None]) -> WorkerGroup:
        raise NotImplementedError

    def release(self, group: WorkerGroup, kill: bool) -> None:
        raise NotImplementedError


class OwnGroups(Groups):
    """A group per run (the default): started with the run, stopped with it."""

    def __init__(self, persistent: bool = True):
        self.persistent = persistent

    def get(self, run_id, res, storage, report):
        group = WorkerGroup(run_id, res, storage, report=report)
        group.start()
        return group

    def release(self, group, kill):
        group.kill() if kill else group.stop()


class SharedGroups(Groups):
    """Groups handed from run to run: a run released without a kill returns its group to a pool,
    and the next run with the same resources takes it instead of starting one (runs side by side
    get groups of their own). `cpt agent explore`'s trajectories and the test suite's end-to-end
    runs skip a group start each this way. The ranks rebuild their model when a plan's model
    differs and re-initialise it for a run's first round; a group released with kill=True (a
    failure, a cancel) is killed, never reused."""

    def __init__(self):
        self.idle: dict[str, list[WorkerGroup]] = {}
        self.lock = threading.Lock()

    def get(self, run_id, res, storage, report):
        key = res.model_dump_json()
        with self.lock:
            pool = self.idle.get(key, [])
            while pool:
                group = pool.pop()
                if group.alive:
                    group.report = report
                    return group
            # idle groups of other shapes hold resources the new group may need: stop them first
            others = [g for k, gs in self.idle.items() if k != key for g in gs]
            self.idle = {k: gs for k, gs in self.idle.items() if k == key}
        for group in others:
            group.stop()
        return OwnGroups().get(run_id, res, storage, report)

    def release(self, group, kill):
        if kill or not group.alive:
            group.kill()
            return
        with self.lock:
            self.idle.setdefault(group.res.model_dump_json(), []).append(group)

    def close(self) -> None:
        with self.lock:
            groups = [g for pool in self.idle.values() for g in pool]
            self.idle.clear()
        for group in groups:
            group.stop()
