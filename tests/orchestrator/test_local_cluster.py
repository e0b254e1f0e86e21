"""`cpt cluster down` stops only what `cpt cluster up` started: a recorded head is that very process
(PID, start time, command line, boot), and only its session is signalled. No Ray needed: bystander
processes stand in for heads, and hypothesis writes the `cluster.json` a stale or edited home holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orchestrator import local_cluster
from orchestrator.home import Home
from store import procs
from store.errors import ClusterError
from tests_helpers import cpt


class _Home:
    def __init__(self, root: Path) -> None:
        self.root = root


def _bystander(home: Path, *, orphan: bool = False) -> subprocess.Popen:
    """A session leader whose command line mentions CPT_HOME/ray (like a `tail -f` of a Ray log);
    with `orphan`, it starts a child in its session and exits (a head that died, its daemon left)."""
    code = ("import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', sys.argv[1]])\n"
            "time.sleep(0.5)\n" if orphan else "import time; time.sleep(300)")
    return subprocess.Popen([sys.executable, "-c", code, str(home / "ray" / "session_latest" / "logs")],
                            start_new_session=True)


def _alive(pid: int) -> bool:
    p = local_cluster._proc(pid)
    return p is not None and not p["zombie"]


def _session(leader: int) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()
            and (p := local_cluster._proc(int(e.name))) and p["sid"] == leader and not p["zombie"]]


@pytest.fixture(scope="module")
def bystander(tmp_path_factory):
    home = tmp_path_factory.mktemp("bystander")
    proc = _bystander(home)
    time.sleep(0.3)
    yield proc, local_cluster._proc(proc.pid)
    proc.kill()
    proc.wait()


_INTS = st.sampled_from(["own", "own_sid", "bystander", 0, 1, -1, 2**31, 2**70]) | st.integers()
_ANY = st.none() | st.booleans() | st.text(max_size=5) | st.floats(allow_nan=True)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pid=_INTS | _ANY, start=st.sampled_from(["bystander", 0]) | _ANY | st.integers(),
       cmd=st.sampled_from(["bystander", "other"]) | _ANY, boot=st.sampled_from(["this", "other"]) | _ANY,
       drop=st.sets(st.sampled_from(["pid", "start", "cmd", "boot_id"])), garbage=st.none() | st.binary(max_size=40))
def test_any_recorded_state_signals_nothing_it_did_not_start(tmp_path_factory, bystander, pid, start, cmd, boot,
                                                            drop, garbage):
    proc, info = bystander
    pid = {"own": os.getpid(), "own_sid": os.getsid(0), "bystander": proc.pid}.get(pid, pid) \
        if isinstance(pid, str) else pid
    state = {"pid": pid, "start": info["start"] if start == "bystander" else start,
             "cmd": {"bystander": info["cmd"], "other": ["ray", "start", "--head"]}.get(cmd, cmd)
             if isinstance(cmd, str) else cmd,
             "boot_id": {"this": procs.boot_id(), "other": "b00t"}.get(boot, boot) if isinstance(boot, str)
             else boot, "gcs": "127.0.0.1:1", "dashboard": "http://127.0.0.1:1", "temp": "x"}
    for key in drop:
        state.pop(key)
    assume(not (state.get("pid") == proc.pid and state.get("start") == info["start"]
                and state.get("cmd") == info["cmd"] and state.get("boot_id") == procs.boot_id()))
    root = tmp_path_factory.mktemp("home")
    (root / "cluster.json").write_bytes(garbage if garbage is not None else json.dumps(state).encode())
    assert local_cluster.read_state(root) is None  # not up: `up` would start a cluster, `status` says none
    assert local_cluster.down(_Home(root)) is False
    assert not (root / "cluster.json").exists()
    assert _alive(proc.pid) and _alive(os.getpid())


def test_a_recorded_head_is_stopped_with_its_session_and_a_dead_heads_orphans_too(tmp_path):
    root = tmp_path / "home"
    root.mkdir()
    for orphan in (False, True):
        proc = _bystander(root, orphan=orphan)
        time.sleep(0.3)
        info = local_cluster._proc(proc.pid)
        state = {"pid": proc.pid, "start": info["start"], "cmd": info["cmd"], "boot_id": procs.boot_id(),
                 "gcs": "127.0.0.1:1", "dashboard": "http://127.0.0.1:1", "temp": str(root / "ray")}
        (root / "cluster.json").write_text(json.dumps(state))
        if orphan:
            proc.wait()  # the head is gone; its child is still in its session
            members = _session(proc.pid)
            assert len(members) == 1 and local_cluster.read_state(root) is None
        else:
            assert local_cluster.read_state(root) == state
            with pytest.raises(ClusterError, match="ray-token: missing"):  # a message, not a traceback
                Home.from_env(root)
            r = cpt(root, "validate", "/nonexistent.yaml")
            assert r.returncode == 2 and "ray-token: missing" in r.stderr and "Traceback" not in r.stderr
            members = _session(proc.pid)
        stranger = _bystander(root)  # its command line names CPT_HOME/ray too, but it is another session
        try:
            assert local_cluster.down(_Home(root)) is (not orphan)
            if not orphan:
                proc.wait(timeout=10)
            assert not any(_alive(p) for p in members) and _alive(stranger.pid)
        finally:
            stranger.kill()
            stranger.wait()
