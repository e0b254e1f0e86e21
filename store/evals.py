"""Downstream evaluation results in the run store (table `evals`, migrations 0009-0010).

A round's evaluation of one task is recorded whole: every metric lm-evaluation-harness returned
for it, or one row with the error, in one transaction that replaces what an earlier attempt
recorded (a failed evaluation is evaluated again on resume; a finished one is not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from store.models import Eval

if TYPE_CHECKING:
    from store.runs import RunStore


def is_task_path(task: str) -> bool:
    """An evaluation task given as a folder (a path), not as an lm-eval task name."""
    return "/" in task or task.startswith((".", "~"))


@dataclass(frozen=True)
class Score:
    """One metric of one task: what an evaluation returns and the store keeps."""

    metric: str
    """lm-eval's `metric,filter` key, e.g. `acc,none`."""
    value: float
    stderr: float | None
    samples: int | None


def score_key(task: str, metric: str) -> str:
    """How a score is named to mixers and in reports: `task metric`, the filter dropped (acc,none -> acc)."""
    return f"{task} {metric.split(',')[0]}"


def record(store: RunStore, run_id: str, stage: int, round_: int, task: str, scores: list[Score],
           seconds: float, error: str | None = None, role: str = "none") -> None:
    """A task's evaluation of round (stage, round_): its scores, or its error (scores empty); `role`
    is the spec entry's (source, target, none)."""
    def do() -> None:
        with store._tx() as s:
            s.execute(delete(Eval).where(Eval.run_id == run_id, Eval.stage_index == stage,
                                         Eval.round_index == round_, Eval.task == task))
            rows = [Eval(run_id=run_id, stage_index=stage, round_index=round_, task=task, metric=sc.metric,
                         value=sc.value, stderr=sc.stderr, samples=sc.samples, seconds=seconds, role=role)
                    for sc in scores]
            if error is not None or not rows:
                rows = [Eval(run_id=run_id, stage_index=stage, round_index=round_, task=task, metric="",
                             seconds=seconds, error=(error or "no metrics returned")[:4000], role=role)]
            s.add_all(rows)

    store._retry(do)


def results(store: RunStore, run_id: str) -> list[Eval]:
    """Every recorded metric and failure of a run, by round and task."""
    with store._sessions() as s:
        q = select(Eval).where(Eval.run_id == run_id).order_by(Eval.stage_index, Eval.round_index, Eval.task,
                                                               Eval.metric)
        return list(s.scalars(q))


def evaluated(store: RunStore, run_id: str) -> set[tuple[int, int, str]]:
    """(stage, round, task) evaluated successfully: what resume does not evaluate again."""
    return {(e.stage_index, e.round_index, e.task) for e in results(store, run_id) if e.error is None}
