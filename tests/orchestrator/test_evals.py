"""Downstream evaluation between rounds with lm-evaluation-harness: a local multiple-choice task
(which continuation is German?) the tiny model learns as it trains on German; the scores cpt
records are what `lm_eval.simple_evaluate` gives on `cpt export`'s folder; a task that crashes is
recorded and the run finishes; resume evaluates what is missing."""

import json
import signal
import threading

import pytest
import yaml

from store.errors import SpecError
from store.evals import Score
from synth import TASK, mc_task
from workers.evals import scores_of, task_names


def test_scores_are_read_from_lm_eval_results_and_task_folders_list_their_tasks(tmp_path):
    from synth import WORDS

    results = {"results": {"t": {"alias": "t", "acc,none": 0.75, "acc_stderr,none": 0.05, "acc_norm,none": 0.5,
                                 "acc_norm_stderr,none": "N/A"}},
               "n-samples": {"t": {"original": 200, "effective": 100}}}
    assert scores_of(results, "t") == [Score("acc,none", 0.75, 0.05, 100), Score("acc_norm,none", 0.5, None, 100)]
    assert scores_of(results, "missing") == []
    folder = mc_task(tmp_path / "tasks", WORDS)
    assert task_names(str(folder)) == [TASK] and task_names("hellaswag") == ["hellaswag"]


def test_eval_entries_are_checked_when_the_spec_is_read(tmp_path, synth):
    from conftest import tiny_spec
    from orchestrator.spec import load_spec

    (tmp_path / "empty").mkdir()
    for task, says in (("../nowhere/x", "not a folder of lm-eval task YAML files"),
                       ("./empty", r"holds no \*\.yaml task files"), ("bad name!", "not an lm-eval task name")):
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(tiny_spec(synth, evals=[{"task": task}])))
        with pytest.raises(SpecError, match=says):
            load_spec(tmp_path / "s.yaml")
    mc_task(tmp_path / "tasks", {"de": ["a"], "en": ["b"]}, n=2)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(tiny_spec(synth, evals=[{"task": "./tasks"}])))
    assert load_spec(tmp_path / "s.yaml")[0].evals[0].task == str((tmp_path / "tasks").resolve())


@pytest.mark.e2e
def test_scores_rise_are_lm_evals_own_survive_a_crashing_task_and_resume_fills_the_gaps(tmp_path, synth):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from conftest import tiny_spec
    from store.evals import results
    from synth import WORDS
    from tests_helpers import cpt, cpt_until_round_runs

    good = mc_task(tmp_path / "german", WORDS)
    broken = mc_task(tmp_path / "broken", WORDS, n=2, name="cpt_broken", data=tmp_path / "no-such-file.jsonl")
    spec = tiny_spec(synth, checkpoints={"keep_last": None})
    spec["stages"] = [{"name": "de", "domains": ["de"], "tokens": 32 * 4 * 90, "rounds": 3,
                       "schedule": {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4, "warmup": 0.1}}]
    spec["evals"] = [{"task": str(good), "role": "target"}, {"task": str(broken), "every": "stage"}]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    home = tmp_path / "home"
    # stopped (SIGTERM) once round 0 is committed, while its evaluation runs: resume evaluates it
    proc, store, run_id = cpt_until_round_runs(home, ["submit", str(tmp_path / "run.yaml"), "--quiet"], finished=1,
                                               timeout=600)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert (0, TASK) not in {(e.round_index, e.task) for e in results(store, run_id) if e.error is None}
    out = cpt(home, "runs", "resume", run_id, "--quiet", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(cpt(home, "runs", "evals", run_id, "--json").stdout)
    acc = {r["round"]: r["value"] for r in rows if r["task"] == TASK and r["metric"] == "acc,none"}
    assert sorted(acc) == [0, 1, 2] and all(r["samples"] == 120 for r in rows if r["task"] == TASK)
    assert acc[2] > acc[0] + 0.15 and acc[2] > 0.7, acc  # it learns which continuation is German
    failed = [r for r in rows if r["task"] == "cpt_broken"]
    assert len(failed) == 1 and failed[0]["round"] == 2 and failed[0]["value"] is None and failed[0]["error"]
    assert {r["role"] for r in rows if r["task"] == TASK} == {"target"} and failed[0]["role"] == "none"
    shown = json.loads(cpt(home, "runs", "show", run_id, "--json").stdout)
    assert shown["status"] == "finished" and shown["evals"][f"{TASK} acc"]["final"] == acc[2]

    # the recorded score is lm-eval's own on the exported checkpoint (the export declares its EOS)
    export = tmp_path / "export"
    assert cpt(home, "export", run_id, "--round", "0.2", "-o", str(export)).returncode == 0
    assert json.loads((export / "config.json").read_text())["eos_token_id"] is not None
    assert json.loads((export / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    assert json.loads((export / "generation_config.json").read_text())["eos_token_id"] is not None
    direct = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(export), "dtype": "float32",
                                                             "device": "cpu"},
                                     tasks=[TASK], task_manager=TaskManager(include_path=str(good)), batch_size=8)
    assert direct["results"][TASK]["acc,none"] == pytest.approx(acc[2], abs=1e-9)



@pytest.mark.e2e
@pytest.mark.parametrize("starved", [False, True])
def test_a_mixer_that_waits_for_evals_sees_the_last_rounds_scores(tmp_path, synth, ray_local, starved):
    """`wait_for_evals: true`: before each round the previous round is committed and evaluated, and
    the mixer's observation carries its scores (with their roles); the wait is an event. Where the
    ranks hold what the evaluation needs (`starved`), the group is stopped for the wait (an event)
    and the next round starts a new one; before, the run waited forever."""
    from conftest import GROUPS, recorded_run, tiny_spec
    from mixers.base import Mixer, MixerConfig, Observation, register
    from orchestrator.controller import Controller
    from synth import WORDS

    @register
    class ScoreSeer(Mixer):
        """Uniform weights; remembers the scores each observation carried."""

        name = "score_seer"
        Config = MixerConfig

        def __init__(self, config):
            super().__init__(config)
            self.seen: list = []

        def propose(self, obs: Observation) -> dict[str, float]:
            self.seen.append({"round": obs.round_index, "roles": obs.score_roles,
                              "scores": {f"{h.stage_index}.{h.round_index}": h.scores for h in obs.history}})
            return {d: 1 / len(obs.domains) for d in obs.domains}

        def state_dict(self):
            return {"seen": self.seen}

    GROUPS.close()  # pooled groups of earlier tests hold the CPU the evaluations need
    spec = tiny_spec(synth, evals=[{"task": str(mc_task(tmp_path / "task", WORDS, n=40)), "role": "target"}])
    # the rank holds both of the cluster's CPUs: beside it the evaluation (1 CPU) would never start
    spec["resources"] = {"cpus": 2} if starved else spec["resources"]
    spec["stages"] = [{"name": "de", "domains": ["de"], "tokens": 32 * 4 * 6, "rounds": 2,
                       "mixer": {"kind": "score_seer", "wait_for_evals": True},
                       "schedule": {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4, "warmup": 0.1}}]
    home, store, run_id = recorded_run(tmp_path / "home", spec)
    ended: list[str] = []
    ctl = threading.Thread(target=lambda: ended.append(Controller(store, home, run_id, tracking=False,
                                                                  groups=GROUPS).run()), daemon=True)
    ctl.start()
    ctl.join(240)
    assert ended == ["finished"], "the run did not finish: waiting for an evaluation that cannot start?"
    stopped = [e.message for e in store.events(run_id) if e.message and "worker group was stopped" in e.message]
    assert len(stopped) == starved and all("1 CPU (0 free beside the worker group)" in m for m in stopped)
    seen = store.rounds(run_id, status="finished")[-1].mixer_state["seen"]
    assert [s["round"] for s in seen] == [0, 1]
    assert seen[0]["scores"] == {}  # nothing evaluated before round 0
    for s in seen[1:]:  # round r saw the scores of every earlier round, round r - 1's included
        assert sorted(s["scores"]) == [f"0.{k}" for k in range(s["round"])]
        assert all(0 <= v[f"{TASK} acc"] <= 1 for v in s["scores"].values())
        assert s["roles"] == {f"{TASK} acc": "target"}
    assert sum("waited" in e.message for e in store.events(run_id) if e.message) == 1
