"""Downstream evaluations of committed rounds, beside training.

After each commit (or each stage's last), every `evals:` entry of the spec becomes a Ray task
with its own resources (workers/evals.py: the checkpoint as its export's model, in memory, then
lm-evaluation-harness); the controller never waits for one between rounds (a mixer that reads
scores does, and stops the worker group first when it holds what an evaluation needs:
`starved`). At each round boundary the finished ones are recorded
(store/evals.py, MLflow `eval.<task>.<metric>` at the round's last step); an evaluation that
raises is recorded with its error and the run goes on. A checkpoint with an evaluation in flight
is kept by retention until the evaluation is done. On resume, committed rounds whose checkpoint
is still kept and that have no successful score for a task are evaluated; at the run's end the
controller waits for the evaluations still running (a stopped run cancels them: resume runs them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.callbacks import RoundCallback
from store import evals as stored

if TYPE_CHECKING:
    from orchestrator.run_tracking import RunTracking
    from orchestrator.spec import RunSpec
    from store.records import RoundPlan, RoundResult
    from store.runs import RunStore


@dataclass(frozen=True)
class Job:
    entry: int
    """Which `evals:` entry it runs."""
    stage: int
    round: int
    attempt: int
    step: int
    names: tuple[str, ...]
    """The lm-eval tasks the entry evaluates (a folder may define several)."""
    started: float


class Evals(RoundCallback):
    def __init__(self, store: RunStore, spec: RunSpec, run_id: str, tracking: RunTracking,
                 message: Callable[[str], None]):
        self.store, self.spec, self.run_id, self.tracking, self.message = store, spec, run_id, tracking, message
        self.jobs: dict[Any, Job] = {}  # Ray ObjectRef -> what it evaluates
        self.scores: dict[tuple[int, int], dict[str, float]] = {}  # (stage, round) -> {"task metric": value}
        from workers.evals import task_names

        # the lm-eval tasks of each entry (a folder's YAML read once) and each task's role
        self.names = [tuple(task_names(entry.task)) for entry in spec.evals]
        self.task_roles = {n: entry.role for entry, names in zip(spec.evals, self.names, strict=True) for n in names}

    def roles(self) -> dict[str, str]:
        """The role of every score seen so far (a mixer's Observation.score_roles)."""
        return {k: self.task_roles.get(k.split(" ")[0], "none") for v in self.scores.values() for k in v}

    def _keep(self, stage: int, round_: int, task: str, scores: list) -> None:
        for sc in scores:
            self.scores.setdefault((stage, round_), {})[stored.score_key(task, sc.metric)] = sc.value

    def _due(self, entry, stage: int, round_: int) -> bool:
        """Whether an entry evaluates this round: every round, or each stage's last."""
        return entry.every == "round" or round_ == self.spec.stages[stage].rounds - 1

    def protected(self) -> set[tuple[int, int, int]]:
        """(stage, round, attempt) of checkpoints an evaluation still reads: retention keeps them."""
        return {(j.stage, j.round, j.attempt) for j in self.jobs.values()}

    def round_finished(self, round_id: int, plan: RoundPlan, result: RoundResult) -> None:
        self.poll()
        for k, entry in enumerate(self.spec.evals):
            if self._due(entry, plan.stage_index, plan.round_index):
                self._launch(k, plan.stage_index, plan.round_index, plan.attempt,
                             plan.global_step_start + plan.num_steps, result.checkpoint)

    def resume(self, committed: list[Any], kept: Callable[[str], bool]) -> None:
        """Evaluate what a stopped controller left unevaluated (committed rounds still on disk)."""
        if not self.spec.evals:
            return
        for e in stored.results(self.store, self.run_id):  # what mixers see of earlier rounds
            if e.error is None and e.value is not None:
                self._keep(e.stage_index, e.round_index, e.task, [e])
        done = stored.evaluated(self.store, self.run_id)
        for c in committed:
            for k, entry in enumerate(self.spec.evals):
                missing = [n for n in self.names[k] if (c.stage_index, c.round_index, n) not in done]
                if missing and self._due(entry, c.stage_index, c.round_index) and kept(c.checkpoint):
                    self._launch(k, c.stage_index, c.round_index, c.plan.attempt,
                                 c.plan.global_step_start + c.plan.num_steps, c.checkpoint)

    def _launch(self, k: int, stage: int, round_: int, attempt: int, step: int, checkpoint: str) -> None:
        """Start the spec's k-th evaluation of round (stage, round_)."""
        entry, names = self.spec.evals[k], self.names[k]
        try:
            import ray

            from workers.evals import evaluate

            # max_calls=1: the worker process (niced: workers/evals.py) exits with the task, never reused by a rank
            task = ray.remote(max_calls=1, max_retries=0)(evaluate).options(
                num_cpus=entry.resources.cpus, num_gpus=entry.resources.gpus,
                name=f"cpt-eval-{self.run_id}-s{stage}r{round_}")
            ref = task.remote(checkpoint, self.spec.tokenizer, entry.task, entry.limit, entry.num_fewshot,
                              self.spec.seed, entry.resources.gpus)
        except Exception as exc:  # an evaluation that cannot even start is recorded, like one that fails
            self._failed(stage, round_, names, 0.0, f"not started: {exc}")
            return
        self.jobs[ref] = Job(k, stage, round_, attempt, step, names, time.monotonic())

    def starved(self, held: dict[str, float]) -> str | None:
        """What an evaluation still to be recorded needs that the cluster cannot give beside `held`
        (the worker group's CPUs and GPUs), e.g. "1 CPU (0 free beside the worker group)"; None
        when every one fits. Such an evaluation runs only once the group is gone."""
        import ray

        total = ray.cluster_resources()
        for job in self.jobs.values():
            res = self.spec.evals[job.entry].resources
            for key, need in (("CPU", res.cpus), ("GPU", res.gpus)):
                room = total.get(key, 0.0) - held.get(key, 0.0)
                if need > room + 1e-9:
                    return f"{need:g} {key} ({max(room, 0):g} free beside the worker group)"
        return None

    def poll(self, timeout: float | None = 0) -> None:
        """Record the evaluations that are done (all of them, waiting up to `timeout`; None: no limit)."""
        import ray

        while self.jobs:
            ready, _ = ray.wait(list(self.jobs), num_returns=len(self.jobs), timeout=timeout)
            if not ready:
                return
            for ref in ready:
                self._record(ref, self.jobs.pop(ref))
            if timeout == 0:
                return

    def _record(self, ref: Any, job: Job) -> None:
        import ray

        seconds = time.monotonic() - job.started
        try:
            out = ray.get(ref)
        except Exception as exc:  # the task raised, or its worker died: recorded, the run goes on
            lines = str(exc).strip().splitlines()
            why = lines[-1] if lines else type(exc).__name__  # the task's own exception, not Ray's wrapper
            self._failed(job.stage, job.round, job.names, seconds, why)
            return
        values = {}
        for name in job.names:
            scores = out["scores"].get(name, [])
            stored.record(self.store, self.run_id, job.stage, job.round, name, scores, out["seconds"],
                          role=self.task_roles[name])
            self._keep(job.stage, job.round, name, scores)
            values.update({f"eval.{name}.{sc.metric.split(',')[0]}": sc.value for sc in scores})  # MLflow's names
        self.tracking.log_evals(job.stage, job.round, job.step, values)

    def _failed(self, stage: int, round_: int, names: tuple[str, ...], seconds: float, why: str) -> None:
        for name in names:
            stored.record(self.store, self.run_id, stage, round_, name, [], seconds, error=why[:4000],
                          role=self.task_roles[name])
        self.message(f"evaluation of round {stage}.{round_} failed ({why[:200]}); the run goes on")

    def run_ended(self, status: str) -> None:
        if status == "finished":
            self.poll(timeout=None)  # the last rounds' evaluations: the run is done when they are
            return
        import ray

        for ref in self.jobs:  # a stopped run: its resume evaluates these rounds again
            ray.cancel(ref, force=True)
        self.jobs.clear()
