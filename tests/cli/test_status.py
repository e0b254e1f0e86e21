"""A run whose controller died without recording it (SIGKILL, SIGHUP, a full disk, a lost node)
is shown as `interrupted (controller gone)`, resumable, and `cpt runs watch` ends saying so, instead
of `running` with an ETA forever."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from orchestrator.home import Home
from store.lease import RunLease
from store.runs import GONE, RunStore
from tests_helpers import cpt, round_plan


def test_a_run_whose_controller_is_gone_is_shown_interrupted_and_watch_ends(tmp_path):
    home = tmp_path / "home"
    store = RunStore(Home.from_env(home).store_url)
    run_id = store.create_run("r", "name: r", {"stages": [{"name": "s", "tokens": 640, "rounds": 1}],
                                               "batch_size": 2, "seq_len": 8}, str(home / "runs"),
                              [("s", 0, 40, 1)])
    dead = subprocess.run([sys.executable, "-c", "from store.lease import new_owner; print(new_owner())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    store.set_run_status(run_id, "running")
    round_id = store.plan_round(round_plan(run_id), {}, None)
    store.start_round(round_id)
    store.set_round_progress(round_id, {"step": 3, "round_first": 0, "round_steps": 40, "global_step": 3,
                                        "loss": 5.0, "lr": 1e-3, "tokens_per_s": 100.0, "t": time.time()})

    lease = RunLease(store, run_id, ttl_s=60)  # a live controller (this process): running, with an ETA
    lease.acquire()
    try:
        shown = json.loads(cpt(home, "runs", "show", run_id, "--json").stdout)
        assert shown["status"] == "running" and shown["progress"]["eta_s"] is not None
    finally:
        lease.release()

    store.update_run(run_id, lease_owner=dead, lease_heartbeat=store.get_run(run_id).created_at)  # SIGKILLed
    assert store.shown_status(store.get_run(run_id)) == GONE
    listed = json.loads(cpt(home, "runs", "list", "--json").stdout)
    assert listed[0]["status"] == GONE
    shown = json.loads(cpt(home, "runs", "show", run_id, "--json").stdout)
    assert shown["status"] == GONE and shown["progress"]["eta_s"] is None
    assert "ETA ?" in cpt(home, "runs", "show", run_id).stdout
    t0 = time.monotonic()
    watched = cpt(home, "runs", "watch", run_id, "--interval", "0.2", timeout=60)
    assert watched.returncode == 2 and "controller is gone" in watched.stderr and f"cpt runs resume {run_id}" \
        in watched.stderr and time.monotonic() - t0 < 30
    assert GONE in watched.stdout and "Traceback" not in watched.stderr
