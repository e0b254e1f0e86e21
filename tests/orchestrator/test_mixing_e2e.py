"""Mixers, replay buffers and the agent inside real runs (local Ray, real training)."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import GROUPS, recorded_run, tiny_spec
from mixers.base import build_mixer
from orchestrator.controller import Controller, SilentReporter
from orchestrator.explore import explore
from orchestrator.home import Home
from orchestrator.planner import DataInfo, Finished, RoundPlanner
from orchestrator.spec import parse_spec
from orchestrator.submit import create_run
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


def test_replay_buffer_doremi_and_sample_reweighting_survive_a_resume(tmp_path, synth, ray_local):
    """A run stopped after its first DoReMi round and resumed: the buffer is filled once, DoReMi
    continues its policy (every proposal equals the mixer replayed over the stored history)."""
    home, store, run_id = _create(tmp_path, _mixing_spec(synth))

    class CancelAfterStage2Round0(SilentReporter):
        def round_finished(self, plan, result):
            if (plan.stage_index, plan.round_index) == (1, 0):
                store.request_cancel(run_id)

    stopped = Controller(store, home, run_id, CancelAfterStage2Round0(), tracking=False, groups=GROUPS).run()
    assert stopped == "cancelled"
    assert Controller(store, home, run_id, tracking=False, groups=GROUPS).run() == "finished"
    rounds = store.rounds(run_id, status="finished")
    buffer = Path(store.get_run(run_id).workdir) / "replay" / "en"
    manifest = json.loads((buffer / "manifest.json").read_text())
    # filled once, though the resumed controller passed the end of stage 1 again
    assert manifest["tokens"]["train"] == 33 * 8 and manifest["seen"] == 32  # 8 steps x 4 sequences of en
    assert manifest["filled_from"] == ["stage-0"]
    s2 = [r for r in rounds if r.stage_index == 1]
    assert all(set(r.weights) == {"de", "replay/en"} for r in s2)
    # DoReMi starts the stage from uniform log-weights and already applies the excess loss measured
    # at the stage start: German (untrained so far) is far above its reference, English less so
    assert s2[0].weights["de"] > 0.5
    assert s2[1].weights != s2[0].weights  # and keeps moving with the measured excess loss
    ctl = Controller(store, home, run_id, tracking=False)  # its spec and folder, for a planner over the store
    done = [Finished.from_row(r) for r in rounds]
    planner = RoundPlanner(ctl.spec, run_id, ctl.workdir, DataInfo("", 0, {}), str)
    replayed = build_mixer(ctl.spec.stages[1].mixer)
    for k, row in enumerate(s2):
        obs = planner.observation(1, k, [x for x in done if (x.stage_index, x.round_index) < (1, k)], {})
        assert planner.propose(replayed, obs) == pytest.approx(row.weights), k  # the same policy throughout
    plan = s2[0].plan
    assert plan.sample_loss.model_dump() == {"kind": "linupper", "r": 0.5, "burn_in": 0}
    assert plan.domain_paths["replay/en"] == str(buffer)
    assert s2[0].result.domain_tokens.get("replay/en", 0) > 0  # the buffer was actually trained on
    trans = store.transitions()
    assert [(t.stage_index, t.round_index, t.num_domains) for t in trans] == [(0, 0, 1), (0, 1, 1), (1, 0, 2),
                                                                               (1, 1, 2)]
    assert trans[2].domains == ["de", "replay/en"] and trans[3].done and trans[2].mixer == "doremi"
    assert trans[2].action == pytest.approx([s2[0].weights["de"], s2[0].weights["replay/en"]])


def test_explore_train_and_run_the_agent(tmp_path, synth, ray_local):
    home = Home.from_env(tmp_path)
    store = RunStore(home.store_url)
    spec = tiny_spec(synth)
    spec["stages"][1].update({"replay": {"fraction": 0.25}})
    results = explore(store, home, parse_spec(yaml.safe_dump(spec)), n=2, concentration=0.5, parallel=2,
                      groups=GROUPS)
    assert sorted(results.values()) == ["finished", "finished"]
    two = store.transitions(num_domains=2, feature_version="3")
    assert len(two) == 4 and {t.mixer for t in two} == {"dirichlet"}
    assert len({tuple(t.action) for t in two}) == 4  # every round drew a different mixture
    # exploring again is resumable: the finished trajectories are kept, only the missing one runs
    again = explore(store, home, parse_spec(yaml.safe_dump(spec)), n=3, concentration=0.5, parallel=2,
                    groups=GROUPS)
    assert set(results) < set(again) and sorted(again.values()) == ["finished"] * 3
    assert len(store.list_runs()) == 3 and len(store.transitions(num_domains=2)) == 6

    # the CLI trains on the store's transitions and says what the agent was trained on
    agent = tmp_path / "agent.safetensors"
    trained = cpt(tmp_path, "agent", "train", "-o", str(agent), "--method", "cql", "--epochs", "30")
    assert trained.returncode == 0 and "cql, 6 transitions from 3 trajectories" in trained.stdout, trained.stderr
    shown = cpt(tmp_path, "agent", "show", str(agent))
    assert shown.returncode == 0, shown.stderr
    for text in ("cql (alpha 1.0)", "en->de x3", "3 training + 0 held out (6 + 0", "hidden_size=32",
                 "version 3: per domain role,weight"):
        assert text in shown.stdout, (text, shown.stdout)
    spec["stages"][1]["mixer"] = {"kind": "agent", "path": str(agent)}
    spec["stages"][1]["replay"]["fraction"] = 0.0  # the agent sets the replay share itself
    spec["name"] = "with-agent"
    text = yaml.safe_dump(spec)
    run_id = create_run(store, home, parse_spec(text), text)
    assert Controller(store, home, run_id, tracking=False, groups=GROUPS).run() == "finished"
    used = [r.weights for r in store.rounds(run_id, status="finished") if r.stage_index == 1]
    mine = [t for t in store.transitions() if t.run_id == run_id and t.stage_index == 1]
    assert {t.mixer for t in mine} == {"agent"} and len(mine) == len(used) == 2
    # each round's weights are the trained policy's mean action at the state the round saw
    from mixers.agent import load_agent, split_state

    nets, _ = load_agent(agent)
    for t, w in zip(mine, used, strict=True):
        mean = nets.mean_action(*split_state(t.state, t.num_domains))
        assert [w[d] for d in t.domains] == pytest.approx([m / sum(mean) for m in mean], rel=1e-5)


def test_explore_records_trajectories_as_they_start_and_stops_cleanly_on_sigterm(tmp_path, synth):
    """`cpt agent explore -n 3000` wrote 3,000 pending runs before the first started, and SIGTERM
    ended it with a traceback. Now a trajectory is recorded when it starts, and SIGTERM interrupts
    the running ones (resumable) and starts no more: exit 143, one message."""
    import signal

    from conftest import long_spec
    from tests_helpers import cpt_until_round_runs

    spec = tmp_path / "proxy.yaml"
    spec.write_text(yaml.safe_dump(long_spec(synth)))
    home = tmp_path / "home"
    proc, store, run_id = cpt_until_round_runs(home, ["agent", "explore", str(spec), "-n", "3000", "--parallel", "1"],
                                               finished=0)
    assert len(store.list_runs(10_000)) == 1
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=90)
    err = proc.stderr.read().decode()
    assert code == 143 and "interrupted by SIGTERM" in err and "Traceback" not in err, err[-3000:]
    runs = store.list_runs(10_000)
    assert [r.status for r in runs] == ["interrupted"] and runs[0].lease_owner is None
