"""One controller per run, SIGTERM and Ctrl-C: real CLI subprocesses on a real local Ray."""

import contextlib
import json
import os
import signal
import time

import pytest
import yaml

from conftest import long_spec
from tests_helpers import children, cpt, cpt_until_round_runs, final_losses

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
    proc, store, run_id = cpt_until_round_runs(home, ["submit", str(spec), "--quiet"], finished=1)

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

    deadline = time.time() + 60
    while (latest := training()) is None:
        assert time.time() < deadline, "no round seen training in the store"
        time.sleep(0.01)
    everything = _descendants(proc.pid)  # the ranks run in sessions of their own, below the CLI's raylet
    ranks = [pid for pid, cmd in everything.items() if cmd.startswith("ray::RayTrainWorker")]
    assert ranks, everything
    os.killpg(proc.pid, signal.SIGSTOP)
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
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
