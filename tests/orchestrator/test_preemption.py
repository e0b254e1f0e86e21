"""One controller per run, SIGTERM and Ctrl-C: real CLI subprocesses on a real local Ray."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import long_spec
from tests_helpers import children, cli_env, cpt, cpt_until_round_runs, final_losses, pause_outside_writes

pytestmark = pytest.mark.e2e


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process below `pid` (the CLI's Ray, its workers, the ranks)."""
    out, todo = {}, children(pid)
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                out[p] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except FileNotFoundError:
            continue
        todo += children(p)
    return out


def test_second_controller_refused_sigterm_interrupts_ctrl_c_cancels_and_resume_matches(tmp_path, synth,
                                                                                       long_reference):
    raw = long_spec(synth)  # rounds of 30 steps: the signals land inside one
    ref_order, ref_losses = final_losses(long_reference[0], long_reference[1])

    home = tmp_path / "b"
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(raw))
    # every step held 0.2 s (rounds of >= 6 s): the store's live progress lags the ranks by up to a
    # second, so on a fast machine an unslowed round could end between the read and the stop below
    proc, store, run_id = cpt_until_round_runs(home, ["submit", str(spec), "--quiet"], finished=1,
                                               env={"CPT_STEP_DELAY_S": "0.2"})

    # a second controller of the live run is refused, naming the owner, and changes nothing
    # (the first is paused meanwhile so that it cannot finish first: its process, and so its lease, live on)
    owner = store.get_run(run_id).lease_owner
    def training():
        """The newest round while it is in the first half of its steps (an earlier round may still
        be `running` with all its steps done: its checkpoint being written)."""
        latest = max(store.rounds(run_id), key=lambda r: r.id)
        p = latest.progress or {}
        done = p.get("step", 0) - p.get("round_first", 0)
        return latest if latest.status == "running" and 0 < done <= p.get("round_steps", 0) // 2 else None

    # the ranks (in sessions of their own, below the CLI's raylet) are the persistent group's: found
    # before the wait, so they are stopped the moment the round is seen training
    everything = _descendants(proc.pid)
    ranks = [pid for pid, cmd in everything.items() if cmd.startswith("ray::RayTrainWorker")]
    assert ranks, everything
    deadline = time.time() + 60
    while (latest := training()) is None:
        assert time.time() < deadline, "no round seen training in the store"
        time.sleep(0.01)
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
    pause_outside_writes(home / "store.db", lambda: os.killpg(proc.pid, signal.SIGSTOP),
                         lambda: os.killpg(proc.pid, signal.SIGCONT))
    try:
        out = cpt(home, "runs", "resume", run_id, "--quiet")
        # meanwhile, any terminal sees where the running round stands (read from the store)
        shown = json.loads(cpt(home, "runs", "show", run_id, "--json").stdout)
    finally:  # all but the ranks go on: the round cannot end before the SIGTERM below lands inside it
        os.killpg(proc.pid, signal.SIGCONT)
    assert out.returncode == 2 and owner in out.stderr and "Traceback" not in out.stderr
    assert store.get_run(run_id).lease_owner == owner and store.get_run(run_id).status == "running"
    p = shown["progress"]
    assert p["round_steps"] == 30 and 0 < p["round_step"] <= 30 and p["loss"] > 0 and p["tokens_per_s"] > 0
    assert p["total_steps"] == 120 and p["eta_s"] is not None

    # SIGTERM (a spot node going away) in the middle of a round: bounded stop, recorded resumable, exit 143
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    try:  # once the controller has recorded the round stopped, frozen ranks would only slow its teardown
        while next(r for r in store.rounds(run_id) if r.id == latest.id).status == "running" and time.time() < t0 + 20:
            time.sleep(0.05)
    finally:
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    code = proc.wait(timeout=90)
    stderr = proc.stderr.read().decode()
    assert code == 143, stderr[-3000:]
    assert time.time() - t0 < 30 and "Traceback" not in stderr and "interrupted by SIGTERM" in stderr
    run = store.get_run(run_id)
    assert (run.status, run.lease_owner) == ("interrupted", None)
    # the round in flight was stopped and recorded failed (it re-runs on resume as a new attempt); one
    # whose checkpoint was still being written committed, or failed to re-run too: none left open
    rounds = [(r.stage_index, r.round_index, r.status) for r in store.rounds(run_id)]
    assert all(st in ("finished", "failed") for *_, st in rounds), rounds
    hit = next(r for r in store.rounds(run_id) if r.id == latest.id)
    assert hit.status == "failed" and "Preempted: SIGTERM mid-round" in hit.error, rounds

    # resumed, then Ctrl-C inside the next round: cancelled, exit 130
    proc, _, _ = cpt_until_round_runs(home, ["runs", "resume", run_id, "--quiet"], finished=2, after=len(rounds))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "Traceback" not in proc.stderr.read().decode()
    assert store.get_run(run_id).status == "cancelled"

    out = cpt(home, "runs", "resume", run_id, "--quiet")
    assert out.returncode == 0, out.stderr[-2000:]
    order, losses = final_losses(store, run_id)
    assert order == ref_order and losses == pytest.approx(ref_losses, abs=1e-5)
    assert store.get_run(run_id).lease_owner is None


def test_a_controller_paused_past_its_lease_writes_nothing_after_the_take_over(tmp_path, synth, long_reference):
    """M1: the lease fences writes. A controller SIGSTOPped past the TTL is taken over; woken while the
    new owner drives the run, it stops at its first write (before: it committed the round its ranks
    finished meanwhile onto the attempt the new owner had abandoned, marked the run failed and ended
    the MLflow run, and the new owner crashed on failed -> finished)."""
    import mlflow

    ref_order, ref_losses = final_losses(long_reference[0], long_reference[1])
    home = tmp_path / "m1"
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(long_spec(synth)))
    ttl = {"CPT_LEASE_TTL_S": "3"}
    # the first controller's heartbeats do not get through (cut off from the store): on waking, its
    # own lease check cannot save it, only the fence on its writes
    first, store, run_id = cpt_until_round_runs(home, ["submit", str(spec), "--quiet"], finished=1,
                                                env={**ttl, "CPT_LEASE_HEARTBEAT_S": "3600"})
    owner = store.get_run(run_id).lease_owner
    # the controller only: its ranks train on and finish the round
    pause_outside_writes(home / "store.db", lambda: os.kill(first.pid, signal.SIGSTOP),
                         lambda: os.kill(first.pid, signal.SIGCONT))
    try:
        time.sleep(4)
        second = subprocess.Popen([sys.executable, "-m", "cli.main", "runs", "resume", run_id, "--quiet"],
                                  env=cli_env(home, ttl), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while store.get_run(run_id).lease_owner in (owner, None):
            assert time.time() < deadline and second.poll() is None, \
                f"the lease was not taken over: {second.stderr.read().decode()[-2000:] if second.poll() else ''}"
            time.sleep(0.1)
        taken = len(store.events(run_id))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    code = first.wait(timeout=60)
    err = first.stderr.read().decode()
    assert code != 0 and "taken over by another controller" in err and "Traceback" not in err, err[-3000:]
    assert store.get_run(run_id).status == "running"  # untouched by the first controller
    assert second.wait(timeout=300) == 0, second.stderr.read().decode()[-3000:]
    run = store.get_run(run_id)
    assert run.status == "finished" and run.error is None
    run_events = [e for e in store.events(run_id)[taken:] if e.entity == "run"]
    assert all(e.to_state in ("running", "finished") for e in run_events), [(e.to_state, e.message)
                                                                             for e in run_events]
    finished = [(r.stage_index, r.round_index) for r in store.rounds(run_id, status="finished")]
    assert len(finished) == len(set(finished)) == 4
    order, losses = final_losses(store, run_id)
    assert order == ref_order and losses == pytest.approx(ref_losses, abs=1e-5)
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert client.get_run(run.mlflow_run_id).info.status == "FINISHED"
