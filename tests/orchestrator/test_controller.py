"""End-to-end: real local Ray, real Lightning training on tiny synthetic domains, real MLflow."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import GROUPS, long_spec, recorded_run, tiny_spec
from orchestrator.controller import Controller, SilentReporter
from orchestrator.reports import stage_summary
from tests_helpers import cli_env, cpt, cpt_until_round_runs, final_losses

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _setup(tmp_path, synth, **over):
    return recorded_run(tmp_path / "home", tiny_spec(synth, **over))


def test_two_stage_run_trains_and_records_everything(tmp_path, synth, ray_local, monkeypatch):
    from orchestrator.planner import Finished

    parsed = []  # committed rounds read back from the store: none in a run that was never resumed
    read = Finished.from_row.__func__
    monkeypatch.setattr(Finished, "from_row", classmethod(lambda cls, row: parsed.append(row.id) or read(cls, row)))
    home, store, run_id = _setup(tmp_path, synth, checkpoints={"keep_last": 1})
    assert Controller(store, home, run_id, groups=GROUPS).run() == "finished"
    assert parsed == []  # a round boundary does not re-read every earlier round (it once did, each round)

    run = store.get_run(run_id)
    assert run.status == "finished" and run.mlflow_run_id
    rounds = store.rounds(run_id)
    assert [(r.stage_index, r.round_index, r.attempt, r.status) for r in rounds] == [
        (0, 0, 1, "finished"), (0, 1, 1, "finished"), (1, 0, 1, "finished"), (1, 1, 1, "finished")]
    assert [(r.step_start, r.step_end) for r in rounds] == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert rounds[0].weights == {"en": 1.0} and rounds[2].weights == pytest.approx({"de": 0.75, "en": 0.25})
    # optimizer state carries over within a stage, and is reset at the stage start
    plans = [r.plan for r in rounds]
    assert [p.load_optimizer for p in plans] == [False, True, False, True]
    assert [p.init_checkpoint for p in plans[1:]] == [r.checkpoint_uri for r in rounds[:-1]]
    # retention (keep_last 1 + stage ends): the end of each stage stays, the round inside each is gone
    kept = [(Path(r.checkpoint_uri) / "meta.json").is_file() for r in rounds]
    assert kept == [False, True, False, True]
    ckpt_dir = Path(run.workdir) / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["s0-r1-a1", "s1-r1-a1"]  # no half-written folder

    # it learned: stage 1 lowers the English loss, stage 2 lowers the German loss
    summary = {row["point"]: row["losses"] for row in stage_summary(store, run_id)}
    assert summary["after s1"]["en"] < summary["start"]["en"] - 0.2  # 8 steps of 4 sequences
    assert summary["after s2"]["de"] < summary["after s1"]["de"] - 0.3
    transitions = [(e.entity, e.to_state) for e in store.events(run_id)]
    assert transitions.count(("round", "finished")) == 4 and transitions[-1] == ("run", "finished")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(home.mlflow_uri)
    parent = client.get_run(run.mlflow_run_id)
    assert parent.data.params["seed"] == "0" and parent.data.params["stages.1.replay.fraction"] == "0.25"
    assert len(client.get_metric_history(parent.info.run_id, "train_loss")) == 16
    assert len(client.get_metric_history(parent.info.run_id, "eval_loss.de")) == 5  # before + 4 rounds
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    # the mixture is a metric everywhere, for every domain of the run (0 where a round did not train it)
    assert sorted(c.data.metrics["weight.de"] for c in children) == [0.0, 0.0, 0.75, 0.75]
    assert {m.value for m in client.get_metric_history(parent.info.run_id, "weight.code")} == {0.0}
    # per-step points carry their step's real time; rounds carry their real start and end
    losses = client.get_metric_history(parent.info.run_id, "train_loss")
    assert len({m.timestamp for m in losses}) > 8 and len(client.get_metric_history(
        parent.info.run_id, "grad_norm")) == 16
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert all(a < b for a, b in spans) and all(spans[i][1] <= spans[i + 1][0] + 1000 for i in range(3))
    assert all(len(client.get_metric_history(c.info.run_id, "train_loss")) == 4 for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "lr_schedule.png", "mixture.png", "loss_curves.png"} <= artifacts
    _check_data_accounting(home.root, run_id, plans, [r.result for r in rounds],
                           run.spec_json["tokenizer"])


def _check_data_accounting(home, run_id, plans, results, tokenizer_path):
    """Cursors hand on from round to round; what each round read is recomputed exactly by the CLI."""
    import json

    import numpy as np

    from cli.audit import round_samples
    from corpus.tokenizer import load_tokenizer

    for plan, prev in zip(plans[1:], results[:-1], strict=True):
        assert {d: plan.cursors[d] for d in prev.cursors} == prev.cursors
    seen = [round_samples(p) for p in plans]
    en = [i for s in seen for i in s.get("en", {}).get("ids", [])]
    assert len(en) == 4 * 8 + 1 * 8 and len(set(en)) == len(en)  # stage 1: all rows; stage 2: 1 of 4
    assert results[-1].cursors["en"] == {"epoch": 0, "pos": len(en), "data": results[0].cursors["en"]["data"]}
    out = cpt(home, "runs", "samples", run_id, "--round", "1.0", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert {d: v["count"] for d, v in listed.items()} == {"de": 12, "en": 4}
    assert listed["en"]["ids"] == seen[2]["en"]["ids"]
    seq = listed["de"]["ids"][0]
    text = cpt(home, "data", "show", "de", "--run", run_id, "--seq", str(seq), "--json")
    assert text.returncode == 0, text.stderr
    shown = json.loads(text.stdout)
    from corpus.sampler import SequenceSource

    row = SequenceSource.open("de", plans[2].domain_paths["de"], 32).rows(np.array([seq]))[0]
    assert shown["tokens"] == row.tolist()
    assert shown["text"] == load_tokenizer(tokenizer_path).decode(row.tolist(), skip_special_tokens=False)
    shown_run = json.loads(cpt(home, "runs", "show", run_id, "--json").stdout)
    assert shown_run["data"]["cursors"]["de"]["pos"] == 24 and shown_run["data"]["epoch_rollovers"] == []
    assert shown_run["mlflow_url"].startswith("http://127.0.0.1:5000/#/experiments/")
    assert shown_run["mlflow_url"].endswith(f"/runs/{shown_run['mlflow_run_id']}?workflowType=machine_learning")
    watched = cpt(home, "runs", "watch", run_id, "--json")  # a finished run: one line, then exit
    assert watched.returncode == 0 and json.loads(watched.stdout) == {"progress": None, "status": "finished"}


def test_cancel_mid_round_stops_cleanly(tmp_path, synth, ray_local):
    home, store, run_id = recorded_run(tmp_path / "home", long_spec(synth))  # rounds of 30 steps
    seen = []

    class CancelInsideSecondRound(SilentReporter):
        def round_started(self, plan, stage):
            seen.append(plan.round_index)

        def progress(self, step, total, loss, lr):  # the second round has begun training
            if seen == [0, 1] and step < 60:
                store.request_cancel(run_id)

    ctl = Controller(store, home, run_id, CancelInsideSecondRound(), tracking=False, poll_s=0.05, groups=GROUPS)
    assert ctl.run() == "cancelled"
    assert store.get_run(run_id).status == "cancelled"
    # the round in flight is stopped and recorded cancelled (its group killed), nothing left open
    assert [r.status for r in store.rounds(run_id)] == ["finished", "cancelled"]
    # and it can be resumed to the end
    assert Controller(store, home, run_id, tracking=False, groups=GROUPS).run() == "finished"
    assert len(store.rounds(run_id, status="finished")) == 4


def test_resume_after_controller_is_killed_during_an_async_write_matches_uninterrupted_run(tmp_path, synth,
                                                                                         long_reference):
    """SIGKILL (controller, its Ray and ranks) inside round 0.1 while round 0.0's checkpoint is still
    being written beside it: neither round committed, resume re-runs both and matches a run that was
    never interrupted; the half-written checkpoint is never the resume point."""
    raw = long_spec(synth)  # rounds of 30 steps; the reference ran uninterrupted in-process
    ref_order, ref_losses = final_losses(long_reference[0], long_reference[1])

    home = tmp_path / "b"
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(raw))
    env = cli_env(home)
    slow = {"CPT_CHECKPOINT_WRITE_DELAY_S": "20"}  # round 0.0's write waits while round 0.1 trains
    proc, store, run_id = cpt_until_round_runs(home, ["submit", str(spec), "--quiet"], finished=0, after=1,
                                               env=slow)
    assert [(r.round_index, r.status) for r in store.rounds(run_id)][:2] == [(0, "running"), (1, "running")]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store.get_run(run_id).status == "running"  # the dead controller could not record anything
    assert not store.rounds(run_id, status="finished")  # round 0.0's result was in, its checkpoint was not

    out = subprocess.run([sys.executable, "-m", "cli.main", "runs", "resume", run_id, "--quiet"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    order, losses = final_losses(store, run_id)
    assert order == ref_order  # each round counted exactly once
    assert losses == pytest.approx(ref_losses, abs=1e-5)
    rounds = store.rounds(run_id)
    assert [(r.round_index, r.attempt, r.status) for r in rounds[:4]] == [
        (0, 1, "failed"), (0, 2, "finished"), (1, 1, "failed"), (1, 2, "finished")]
    assert rounds[0].checkpoint_uri is None and rounds[1].plan.init_checkpoint is None  # from the seeded init
    # the next round starts from the retried attempt's checkpoint, never the interrupted one's folder
    assert rounds[3].plan.init_checkpoint == rounds[1].checkpoint_uri
    shown = json.loads(subprocess.run([sys.executable, "-m", "cli.main", "runs", "show", run_id, "--json"],
                                      env=env, capture_output=True, text=True).stdout)
    done = [x for x in shown["rounds"] if x["status"] == "finished"]
    assert all(x["checkpoint_stall_s"] is not None and x["checkpoint_write_s"] is not None for x in done)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    parent = store.get_run(run_id).mlflow_run_id
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 4  # no round logged twice
