"""The run lease: one controller per run, taken over only when its holder is gone."""

import subprocess
import sys
from datetime import timedelta

import pytest

from store.lease import RunBusy, RunLease, holder_alive
from store.models import utcnow
from store.runs import RunStore


@pytest.fixture
def run(store_url):
    store = RunStore(store_url)
    return store, store.create_run("r", "name: r", {"stages": []}, "/w", [("s", 0, 4, 1)])


def test_second_controller_is_refused_naming_the_owner(run):
    store, run_id = run
    a = RunLease(store, run_id, ttl_s=60)
    a.acquire()
    b = RunLease(store, run_id, ttl_s=60)
    with pytest.raises(RunBusy, match=a.owner):
        b.acquire()
    assert RunBusy.exit_code == 2 and holder_alive(store, run_id)
    a.release()
    assert not holder_alive(store, run_id)
    b.acquire()
    assert store.get_run(run_id).lease_owner == b.owner
    b.release()


def test_stale_heartbeat_is_taken_over_and_the_old_owners_next_renewal_marks_its_lease_lost(run):
    store, run_id = run
    a = RunLease(store, run_id, ttl_s=60)
    a.acquire()
    a._stop.set()  # a controller that hangs: no more heartbeats
    store.update_run(run_id, lease_heartbeat=utcnow() - timedelta(seconds=61))
    b = RunLease(store, run_id, ttl_s=60)
    b.acquire()
    assert "lease taken over from " + a.owner in [e.message for e in store.events(run_id)][-1]
    assert not a.renew() and a.lost.is_set()  # what the old controller's round loop checks (LeaseLost)
    a.release()  # releasing a lost lease changes nothing
    assert store.get_run(run_id).lease_owner == b.owner
    b.release()


def test_owner_process_that_died_is_taken_over_at_once(run):
    store, run_id = run
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    store.update_run(run_id, lease_owner=f"{socket.gethostname()}:{dead.stdout.strip()}:abc",
                     lease_heartbeat=utcnow())
    assert not holder_alive(store, run_id)
    b = RunLease(store, run_id, ttl_s=3600)
    b.acquire()  # no need to wait an hour for a SIGKILLed controller on this host
    b.release()


def test_owner_on_another_host_is_live_until_the_ttl(run):
    store, run_id = run
    store.update_run(run_id, lease_owner="elsewhere:1:abc", lease_heartbeat=utcnow())
    with pytest.raises(RunBusy, match="elsewhere:1:abc"):
        RunLease(store, run_id, ttl_s=3600).acquire()


def test_heartbeat_keeps_a_live_lease_fresh(run):
    import time

    store, run_id = run
    a = RunLease(store, run_id, ttl_s=4)  # beats every second
    a.acquire()
    first = store.get_run(run_id).lease_heartbeat
    time.sleep(2.5)
    assert store.get_run(run_id).lease_heartbeat > first and not a.lost.is_set()
    with pytest.raises(RunBusy):
        RunLease(store, run_id, ttl_s=4).acquire()
    a.release()


def test_cancel_of_a_run_whose_controller_is_dead_cancels_it(run):
    store, run_id = run
    store.set_run_status(run_id, "running")
    store.update_run(run_id, lease_owner="elsewhere:1:abc", lease_heartbeat=utcnow() - timedelta(hours=1))
    assert store.request_cancel(run_id) == "cancelled"
    assert store.get_run(run_id).status == "cancelled" and store.get_run(run_id).lease_owner is None
    live = store.create_run("r", "name: r", {"stages": []}, "/w", [("s", 0, 4, 1)])
    store.set_run_status(live, "running")
    lease = RunLease(store, live, ttl_s=60)
    lease.acquire()
    assert store.request_cancel(live) == "requested"  # a live controller stops itself
    lease.release()
