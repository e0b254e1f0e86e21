"""Mixers, replay buffers and the agent inside real runs (local Ray, real training)."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import recorded_run, tiny_spec
from orchestrator.controller import Controller, SilentReporter, create_run
from orchestrator.explore import explore
from orchestrator.home import Home
from orchestrator.spec import parse_spec
from store.records import RoundPlan
from store.runs import RunStore
from tests_helpers import cpt

pytestmark = pytest.mark.e2e


def _mixing_spec(synth, **stage2):
    spec = tiny_spec(synth)
    spec["stages"][1].update({"replay": {"buffer": {"tokens": 33 * 8}},  # DoReMi sets the replay share
                              "mixer": {"kind": "doremi", "reference": {"en": 3.0, "de": 3.0}, "smoothing": 0.1},
                              "sample_loss": {"kind": "linupper", "r": 0.5}}, **stage2)
    return spec


_create = recorded_run


def test_replay_buffer_doremi_and_sample_reweighting_in_a_run(tmp_path, synth, ray_local):
    home, store, run_id = _create(tmp_path, _mixing_spec(synth))
    assert Controller(store, home, run_id, tracking=False).run() == "finished"
    rounds = store.rounds(run_id, status="finished")
    buffer = Path(store.get_run(run_id).workdir) / "replay" / "en"
    manifest = json.loads((buffer / "manifest.json").read_text())
    assert manifest["tokens"]["train"] == 33 * 8 and manifest["seen"] == 32  # 8 steps x 4 sequences of en
    assert manifest["filled_from"] == ["stage-0"]
    s2 = [r for r in rounds if r.stage_index == 1]
    assert all(set(r.weights) == {"de", "replay/en"} for r in s2)
    # DoReMi starts the stage from uniform log-weights and already applies the excess loss measured
    # at the stage start: German (untrained so far) is far above its reference, English less so
    assert s2[0].weights["de"] > 0.5
    assert s2[1].weights != s2[0].weights  # and keeps moving with the measured excess loss
    plan = RoundPlan.from_json(s2[0].plan_json)
    assert plan.sample_loss.model_dump() == {"kind": "linupper", "r": 0.5, "burn_in": 0}
    assert plan.domain_paths["replay/en"] == str(buffer)
    result = json.loads(s2[0].result_json)
    assert result["domain_tokens"].get("replay/en", 0) > 0  # the buffer was actually trained on
    trans = store.transitions()
    assert [(t.stage_index, t.round_index, t.num_domains) for t in trans] == [(0, 0, 1), (0, 1, 1), (1, 0, 2),
                                                                               (1, 1, 2)]
    assert trans[2].domains == ["de", "replay/en"] and trans[3].done and trans[2].mixer == "doremi"
    assert trans[2].action == pytest.approx([s2[0].weights["de"], s2[0].weights["replay/en"]])


def test_resumed_adaptive_mixer_continues_the_same_policy(tmp_path, synth, ray_local):
    spec = _mixing_spec(synth)
    spec["stages"][1]["rounds"] = 3
    ref_home, ref_store, ref = _create(tmp_path / "ref", spec)
    Controller(ref_store, ref_home, ref, tracking=False).run()

    home, store, run_id = _create(tmp_path / "cut", spec)

    class CancelAfterStage2Round0(SilentReporter):
        def round_finished(self, plan, result):
            if (plan.stage_index, plan.round_index) == (1, 0):
                store.request_cancel(run_id)

    assert Controller(store, home, run_id, CancelAfterStage2Round0(), tracking=False).run() == "cancelled"
    assert Controller(store, home, run_id, tracking=False).run() == "finished"
    got = [r.weights for r in store.rounds(run_id, status="finished")]
    want = [r.weights for r in ref_store.rounds(ref, status="finished")]
    assert got == want  # DoReMi's log-weights were restored from the store, not restarted


def test_explore_train_and_run_the_agent(tmp_path, synth, ray_local):
    home = Home.from_env(tmp_path)
    store = RunStore(home.store_url)
    spec = tiny_spec(synth)
    spec["stages"][1].update({"replay": {"fraction": 0.25}})
    results = explore(store, home, parse_spec(yaml.safe_dump(spec)), n=2, concentration=0.5, parallel=2)
    assert sorted(results.values()) == ["finished", "finished"]
    two = store.transitions(num_domains=2, feature_version="2")
    assert len(two) == 4 and {t.mixer for t in two} == {"dirichlet"}
    assert len({tuple(t.action) for t in two}) == 4  # every round drew a different mixture
    # exploring again is resumable: the finished trajectories are kept, only the missing one runs
    again = explore(store, home, parse_spec(yaml.safe_dump(spec)), n=3, concentration=0.5, parallel=2)
    assert set(results) < set(again) and sorted(again.values()) == ["finished"] * 3
    assert len(store.list_runs()) == 3 and len(store.transitions(num_domains=2)) == 6

    # the CLI trains on the store's transitions and says what the agent was trained on
    agent = tmp_path / "agent.safetensors"
    trained = cpt(tmp_path, "agent", "train", "-o", str(agent), "--method", "cql", "--epochs", "30")
    assert trained.returncode == 0 and "cql, 6 transitions from 3 trajectories" in trained.stdout, trained.stderr
    shown = cpt(tmp_path, "agent", "show", str(agent))
    assert shown.returncode == 0, shown.stderr
    for text in ("cql (alpha 1.0)", "en->de x3", "3 training + 0 held out (6 + 0", "hidden_size=32",
                 "version 2: per domain role,weight"):
        assert text in shown.stdout, (text, shown.stdout)
    spec["stages"][1]["mixer"] = {"kind": "agent", "path": str(agent)}
    spec["stages"][1]["replay"]["fraction"] = 0.0  # the agent sets the replay share itself
    spec["name"] = "with-agent"
    text = yaml.safe_dump(spec)
    run_id = create_run(store, home, parse_spec(text), text)
    assert Controller(store, home, run_id, tracking=False).run() == "finished"
    used = [r.weights for r in store.rounds(run_id, status="finished") if r.stage_index == 1]
    assert all(set(w) == {"de", "en"} and sum(w.values()) == pytest.approx(1) for w in used)
    assert {t.mixer for t in store.transitions() if t.run_id == run_id and t.stage_index == 1} == {"agent"}
