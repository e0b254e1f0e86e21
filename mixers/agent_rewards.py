"""The agent's reward from downstream scores (spec `evals:` with `role: source|target`).

Every stored transition carries the loss reward (balanced change of held-out losses), computed
when its round commits. Downstream scores arrive later (evaluations run beside training), so the
score reward is computed when the agent is trained (`cpt agent train --reward scores`): for the
transition of round (s, r), before = the scores of the run's previous committed round, after =
those of round (s, r), and

    reward = 1/2 (relative change of the mean source score + relative change of the mean target score)

(higher scores are better; a role with no task scored at both rounds is left out; the Data Mixing
Agent paper's balance of source-field and target-field benchmarks). A transition whose round or
previous round has no score of a role-carrying task is left out of training, and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mixers.agent import mean_relative_change

ROLES = ("source", "target")
DEFAULT_METRICS = ("acc", "exact_match")
"""A task's score: the first of these metrics it reports (lm-eval's names, the filter dropped)."""


@dataclass(frozen=True)
class Step:
    """A stored transition with the reward training uses (what `train_agent` reads)."""

    run_id: str
    stage_index: int
    round_index: int
    state: list
    action: list
    reward: float
    next_state: list
    done: bool
    domains: list = field(default_factory=list)


def balanced_change(before: dict[str, tuple[float, str]], after: dict[str, tuple[float, str]]) -> float | None:
    """Mean over roles of the relative change of the role's mean score ({task: (value, role)});
    None when no source or target task is scored in both."""
    b, a = {t: v for t, (v, _) in before.items()}, {t: v for t, (v, _) in after.items()}
    parts = [x for role in ROLES if (x := mean_relative_change(b, a, [t for t, (_, r) in after.items() if r == role]))
             is not None]
    return sum(parts) / len(parts) if parts else None


def round_scores(rows: Iterable[Any], metrics: Sequence[str] = DEFAULT_METRICS) -> dict[tuple[int, int], dict]:
    """Eval rows of one run -> {(stage, round): {task: (value, role)}}, one metric per task (the first
    of `metrics` it has); failures and tasks of role none are skipped."""
    found: dict[tuple[int, int], dict[str, dict[str, tuple[float, str]]]] = {}
    for e in rows:
        if e.error is None and e.value is not None and e.role in ROLES:
            found.setdefault((e.stage_index, e.round_index), {}).setdefault(e.task, {})[e.metric.split(",")[0]] = \
                (e.value, e.role)
    out = {}
    for key, tasks in found.items():
        picked = {t: next(m[name] for name in metrics if name in m) for t, m in tasks.items()
                  if any(name in m for name in metrics)}
        if picked:
            out[key] = picked
    return out


def score_rewards(transitions: Iterable[Any], scores: dict[str, dict[tuple[int, int], dict]],
                  committed: dict[str, list[tuple[int, int]]]) -> tuple[list[Step], int]:
    """Transitions -> (steps rewarded by downstream scores, how many were left out). `scores` is
    round_scores per run, `committed` each run's finished rounds as (stage, round), any order."""
    previous = {run: dict(zip(order[1:], order, strict=False)) for run, order in
                ((run, sorted(keys)) for run, keys in committed.items())}
    steps, dropped = [], 0
    for t in transitions:
        key = (t.stage_index, t.round_index)
        before = previous.get(t.run_id, {}).get(key)
        run = scores.get(t.run_id, {})
        reward = balanced_change(run[before], run[key]) if before in run and key in run else None
        if reward is None:
            dropped += 1
            continue
        steps.append(Step(t.run_id, t.stage_index, t.round_index, t.state, t.action, reward, t.next_state, t.done,
                          list(getattr(t, "domains", None) or [])))
    return steps, dropped


def from_store(store: Any, transitions: list[Any], metrics: Sequence[str] = DEFAULT_METRICS) -> tuple[list[Step], int]:
    """score_rewards over the runs of `transitions`, reading their evaluations and rounds from the store."""
    from store import evals

    runs = sorted({t.run_id for t in transitions})
    scores = {r: round_scores(evals.results(store, r), metrics) for r in runs}
    committed = {r: [(x.stage_index, x.round_index) for x in store.rounds(r, status="finished", light=True)]
                 for r in runs}
    return score_rewards(transitions, scores, committed)
