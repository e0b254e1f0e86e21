"""The run lease: one controller per run, taken over only when its holder is gone."""

import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest

from store.errors import InputError, LeaseLost
from store.lease import Owner, RunBusy, RunLease, holder_alive, lease_ttl_s
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


def _owner_of(code: str) -> str:
    """The owner id a controller process running `code` after printing it would hold."""
    child = subprocess.Popen([sys.executable, "-c", "from store.lease import new_owner; print(new_owner(3600), "
                              f"flush=True); {code}"], stdout=subprocess.PIPE, text=True)
    return child, child.stdout.readline().strip()


def test_owner_process_that_died_or_whose_pid_is_reused_is_taken_over_at_once(run):
    store, run_id = run
    child, owner = _owner_of("pass")
    child.wait()
    store.update_run(run_id, lease_owner=owner, lease_heartbeat=utcnow())
    assert not holder_alive(store, run_id)
    b = RunLease(store, run_id, ttl_s=3600)
    b.acquire()  # no need to wait an hour for a SIGKILLed controller on this host
    b.release()
    # the owner's PID now names another process (PIDs are reused): its start time tells them apart
    live, owner = _owner_of("import time; time.sleep(60)")
    try:
        o = Owner.parse(owner)
        store.update_run(run_id, lease_owner=owner, lease_heartbeat=utcnow())
        assert holder_alive(store, run_id)
        store.update_run(run_id, lease_owner=owner.replace(f".{o.start}.", f".{int(o.start) - 1}."))
        assert not holder_alive(store, run_id)
        # the same host name in another PID namespace (another container): judged by its heartbeat only
        store.update_run(run_id, lease_owner=owner.replace(f".{o.ns}.", ".4026530000.").replace(
            f".{o.start}.", f".{int(o.start) - 1}."))
        assert holder_alive(store, run_id)
        with pytest.raises(RunBusy):
            RunLease(store, run_id, ttl_s=3600).acquire()
    finally:
        live.kill()
        live.wait()


def test_a_short_ttl_never_takes_over_a_live_owner(run, monkeypatch):
    store, run_id = run
    for bad in ("0", "-1", "2", "nan", "soon", "1e9"):
        monkeypatch.setenv("CPT_LEASE_TTL_S", bad)
        with pytest.raises(InputError, match="CPT_LEASE_TTL_S"):
            lease_ttl_s()
    monkeypatch.setenv("CPT_LEASE_TTL_S", "60")
    a = RunLease(store, run_id)  # beats every 15 s
    a.acquire()
    a._stop.set()
    store.update_run(run_id, lease_owner=a.owner.replace(socket.gethostname(), "elsewhere"))
    a.owner = store.get_run(run_id).lease_owner
    monkeypatch.setenv("CPT_LEASE_TTL_S", "3")
    time.sleep(3.5)  # older than the resumer's TTL, younger than the owner's: the owner's counts
    with pytest.raises(RunBusy):
        RunLease(store, run_id).acquire()
    a.release()


def test_heartbeats_use_the_database_clock_and_writes_are_fenced(run, monkeypatch):
    store, run_id = run
    import store.models as models

    monkeypatch.setattr(models, "utcnow", lambda: datetime(2001, 1, 1))  # a client clock far behind
    a = RunLease(store, run_id, ttl_s=60)
    a.acquire()
    a._stop.set()
    with store._sessions() as s:
        assert abs((store.db_now(s) - store.get_run(run_id).lease_heartbeat).total_seconds()) < 5
    mine = store.fenced(run_id)
    mine.arm(a.owner)
    mine.add_event(run_id, "written while the lease is ours")
    with store._sessions() as s:  # a pause past the TTL: the heartbeat is old by the database's clock
        store.update_run(run_id, lease_heartbeat=store.db_now(s) - timedelta(seconds=61))
    b = RunLease(store, run_id, ttl_s=60)
    b.acquire()
    before = [(e.message, e.to_state) for e in store.events(run_id)]
    for write in (lambda: mine.add_event(run_id, "late"), lambda: mine.set_run_status(run_id, "failed", error="x"),
                  lambda: mine.update_run(run_id, mlflow_run_id="x")):
        with pytest.raises(LeaseLost):
            write()
    assert [(e.message, e.to_state) for e in store.events(run_id)] == before
    assert store.get_run(run_id).lease_owner == b.owner and store.get_run(run_id).mlflow_run_id is None
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
