"""`cpt cluster up|down|status`: one persistent local Ray for a CPT_HOME, with its dashboard.

Without it every `cpt submit` starts and stops its own Ray (seconds each time, and nothing to look
at between runs). `cpt cluster up` starts `ray start --head` once: token auth (a token generated
into CPT_HOME/secrets, readable by this user only), every port on 127.0.0.1, Ray's temp dir under
CPT_HOME, the dashboard on. Its address goes to CPT_HOME/cluster.json; while it is up, commands
that would start a Ray join it instead (an explicit --address/RAY_ADDRESS still wins).
`cpt cluster down` stops exactly that head's processes (never `ray stop`, which would stop every
Ray on the machine): the head is recorded as that very process (PID, start time, command line,
boot id) and only its session is signalled, never whatever a command line or a reused PID names.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.cluster import WORKER_NICENESS
from store import procs
from store.errors import ClusterError

STATE = "cluster.json"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc(pid: int) -> dict[str, Any] | None:
    """Who `pid` is now: its start time (clock ticks since boot), session id and command line;
    None if no such process (or pid is not a plain positive integer)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return None
    st = procs.stat(pid)
    if st is None:
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return {"start": st.start, "sid": st.sid, "zombie": st.state in ("Z", "X"),
            "cmd": [c.decode(errors="replace") for c in cmd if c]}


def _is_head(state: dict[str, Any], proc: dict[str, Any] | None) -> bool:
    """Whether `proc` is the head `state` recorded: same boot, start time and command line. A PID
    alone names any process once the head is gone (PIDs are reused, after a reboot at once)."""
    return (proc is not None and state.get("boot_id") == procs.boot_id() and proc["start"] == state.get("start")
            and proc["cmd"] == state.get("cmd"))


def _recorded(root: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None


def read_state(root: Path) -> dict[str, Any] | None:
    """The recorded cluster of this CPT_HOME if its head still runs (that very process), else None."""
    state = _recorded(root)
    if state is None or not _is_head(state, _proc(state["pid"])):
        return None
    return state


def _token(root: Path) -> str:
    path = root / "secrets" / "ray-token"
    try:
        return path.read_text().strip()
    except OSError:
        raise ClusterError(f"{path}: missing, but {root / STATE} names a running cluster; "
                           "`cpt cluster down` stops it, `cpt cluster up` starts one with a new token") from None


def join_env(root: Path) -> dict[str, str]:
    """What a process needs to join the recorded cluster: its address and its token."""
    state = read_state(root)
    if state is None:
        return {}
    return {"RAY_ADDRESS": state["gcs"], "RAY_AUTH_TOKEN": _token(root), "RAY_AUTH_MODE": "token"}


def up(home, num_cpus: int | None = None, timeout: float = 120) -> dict[str, Any]:
    """Start the head (or return the running one)."""
    state = read_state(home.root)
    if state is not None:
        return state
    token = secrets.token_hex(32)
    home.write_secret("ray-token", token)
    temp = home.ray_temp
    temp.mkdir(parents=True, exist_ok=True)
    gcs, dash = _port(), _port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_worker_niceness": str(WORKER_NICENESS)}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
           f"--num-cpus={num_cpus or os.cpu_count()}", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={_port()}",
           f"--temp-dir={temp}", "--disable-usage-stats", "--include-dashboard=true",
           f"--object-store-memory={512 * 1024**2}"]
    log = open(home.root / "cluster.log", "ab")  # noqa: SIM115 (the head outlives this process)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    me = _proc(proc.pid) or {}
    state = {"pid": proc.pid, "start": me.get("start"), "cmd": me.get("cmd"), "boot_id": procs.boot_id(),
             "gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}",
             "temp": str(temp), "started": time.time()}
    deadline = time.monotonic() + timeout
    while True:
        req = urllib.request.Request(state["dashboard"] + "/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        try:
            urllib.request.urlopen(req, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill(state, proc.poll() is None)
                raise ClusterError(f"ray head did not start (see {home.root / 'cluster.log'})") from None
            time.sleep(0.5)
    (home.root / STATE).write_text(json.dumps(state, indent=2))
    return state


def _members(state: dict[str, Any]) -> list[int]:
    """The processes of the head's session (it was started as a session leader, and Ray's daemons
    and workers stay in its session) that started after it on this boot: nothing else is touched,
    whatever its command line mentions."""
    pid = state["pid"]
    if (state.get("boot_id") != procs.boot_id() or not isinstance(state.get("start"), int) or pid <= 1
            or pid == os.getsid(0)):
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            st = procs.stat(int(entry.name))
            if st and st.state not in ("Z", "X") and st.sid == pid and st.start >= state["start"]:
                found.append(int(entry.name))
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _kill(state: dict[str, Any], head_alive: bool) -> None:
    # `ray start --block` stops its daemons in order on SIGTERM (seconds); signalling them all at
    # once leaves the head waiting on them. Orphans of a dead head get SIGTERM themselves.
    _signal([state["pid"]] if head_alive else _members(state), signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not _members(state):
            return
        time.sleep(0.3)
    _signal(_members(state), signal.SIGKILL)


def down(home) -> bool:
    """Stop the recorded head and its session's processes; False if none was running. A stale
    record (its head gone, its PID reused by anything else) is removed and nothing is signalled
    but the leftovers of that very session."""
    state = _recorded(home.root)
    (home.root / STATE).unlink(missing_ok=True)
    if state is None:
        return False
    head = _proc(state["pid"])
    alive = _is_head(state, head)
    # A session id is not reused while any process is in that session: with the head gone, the
    # session's stragglers are still the head's. With its PID now another process, touch nothing.
    if alive or head is None:
        _kill(state, alive)
    return alive
