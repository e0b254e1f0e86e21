"""The agent's reward from downstream scores: the balance, the choice of metric, the pairing of
rounds, and an agent trained on a store whose scores and losses disagree follows the scores."""

from types import SimpleNamespace as NS

import numpy as np
import pytest

from mixers.agent import FEATURE_VERSION, GLOBAL, PER_DOMAIN, Agent, AgentConfig, save_agent
from mixers.agent_rewards import balanced_change, from_store, round_scores, score_rewards
from mixers.agent_train import train_agent
from mixers.base import Observation
from store import evals
from store.evals import Score
from store.runs import RunStore
from tests_helpers import round_plan, round_result


def test_balanced_change_is_the_mean_relative_change_of_source_and_target():
    before = {"mmlu": (0.50, "source"), "math": (0.30, "source"), "de": (0.40, "target")}
    after = {"mmlu": (0.45, "source"), "math": (0.31, "source"), "de": (0.50, "target")}
    # source mean 0.40 -> 0.38 (-5%), target 0.40 -> 0.50 (+25%)
    assert balanced_change(before, after) == pytest.approx((-0.05 + 0.25) / 2)
    assert balanced_change(before, {"de": (0.5, "target")}) == pytest.approx(0.25)  # one role scored
    assert balanced_change({}, after) is None and balanced_change(before, {"x": (1.0, "none")}) is None


def test_round_scores_pick_one_metric_and_skip_failures_and_roleless_tasks():
    def row(stage, rnd, task, metric, value, role="target", error=None):
        return NS(stage_index=stage, round_index=rnd, task=task, metric=metric, value=value, role=role, error=error)

    rows = [row(0, 0, "de", "acc_norm,none", 0.9), row(0, 0, "de", "acc,none", 0.4),
            row(0, 0, "math", "exact_match,strict", 0.2, "source"), row(0, 0, "ppl", "word_perplexity,none", 9.0),
            row(0, 0, "misc", "acc,none", 0.7, "none"), row(0, 1, "de", "", None, error="boom")]
    assert round_scores(rows) == {(0, 0): {"de": (0.4, "target"), "math": (0.2, "source")}}
    assert round_scores(rows, ["acc_norm"]) == {(0, 0): {"de": (0.9, "target")}}


def test_each_round_is_paired_with_the_runs_previous_committed_round():
    t = [NS(run_id="r", stage_index=s, round_index=k, state=[], action=[0.5, 0.5], reward=-9.0, next_state=[],
            done=False, domains=["a", "b"]) for s, k in ((0, 0), (1, 0), (1, 1), (1, 2))]
    sc = {(0, 0): {"de": (0.40, "target")}, (1, 0): {"de": (0.44, "target")}, (1, 2): {"de": (0.5, "target")}}
    steps, dropped = score_rewards(t, {"r": sc}, {"r": [(1, 2), (0, 0), (1, 1), (1, 0)]})
    # (0,0) has no round before it; (1,1) no score; (1,2)'s previous round (1,1) has none either
    assert [(s.stage_index, s.round_index) for s in steps] == [(1, 0)] and dropped == 3
    assert steps[0].reward == pytest.approx(0.1)  # across the stage boundary: (0,0) -> (1,0)


def _k2_state(rows, progress):
    return [x for row in rows for x in row] + [progress, 0.5]


def test_an_agent_trained_on_score_rewards_follows_the_scores_not_the_losses(tmp_path):
    """Stored loss rewards favour a target share of 0.2, the recorded target scores 0.8: trained with
    the score reward (read through migration 0010's role column) the agent gives the target ~0.8."""
    from store.db import upgrade

    url = f"sqlite:///{tmp_path}/s.db"
    upgrade(url)
    store = RunStore(url)
    rng = np.random.default_rng(0)
    for i in range(24):
        rid = store.create_run(f"r{i}", "name: r", {"stages": []}, "/w", [("s0", 0, 10, 1), ("s1", 10, 10, 3)])
        first = store.plan_round(round_plan(rid, stage=0, rnd=0), {}, {})
        store.start_round(first)
        store.finish_round(first, round_result())
        evals.record(store, rid, 0, 0, "de", [Score("acc,none", 0.40, None, 100)], 1.0, role="target")
        evals.record(store, rid, 0, 0, "en", [Score("acc,none", 0.60, None, 100)], 1.0, role="source")
        rows = [[1.0, 0.5, 0.5, 0, 0, 0, 0, 0], [0.0, 0.5, 0.5, 0, 0, 0, 0, 0]]
        de = 0.40
        for r in range(3):
            a = rng.dirichlet([1.0, 1.0])
            state = _k2_state(rows, r / 3)
            rows = [[row[0], a[j], row[1], row[3] - 0.05, -0.5, row[4], row[5], 0.0] for j, row in enumerate(rows)]
            rid_round = store.plan_round(round_plan(rid, stage=1, rnd=r), {}, {})
            store.start_round(rid_round)
            store.finish_round(rid_round, round_result(), transition={
                "num_domains": 2, "domains": ["de", "replay/en"], "state": state, "action": a.tolist(),
                "reward": -abs(a[0] - 0.2), "next_state": _k2_state(rows, (r + 1) / 3), "done": r == 2,
                "mixer": "dirichlet", "feature_version": FEATURE_VERSION})
            de *= 1 + 0.2 * (1 - abs(a[0] - 0.8))
            evals.record(store, rid, 1, r, "de", [Score("acc,none", de, None, 100)], 1.0, role="target")
            evals.record(store, rid, 1, r, "en", [Score("acc,none", 0.60, None, 100)], 1.0, role="source")
    stored = [t for t in store.transitions() if t.num_domains == 2]
    steps, dropped = from_store(store, stored)
    assert len(steps) == 72 and dropped == 0
    start = Observation(stage_index=1, round_index=0, num_rounds=3, stage_domains=["de"],
                        replay_domains=["replay/en"], replay_fraction=0.0, domain_tokens={}, history=[],
                        start_losses={"de": 8.0, "en": 4.0})
    share = {}
    for name, rows in (("scores", steps), ("losses", stored)):
        nets, meta = train_agent(rows, method="awr", epochs=300, beta=0.2)
        path = save_agent(nets, tmp_path / f"{name}.safetensors", meta)
        share[name] = Agent(AgentConfig(kind="agent", path=str(path))).propose(start)["de"]
    assert share["scores"] > 0.65 > 0.45 > share["losses"], share
    assert len(PER_DOMAIN) == 8 and len(GLOBAL) == 2  # the hand-built states above assume feature version 3
