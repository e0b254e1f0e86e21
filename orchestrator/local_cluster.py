"""`cpt cluster up|down|status`: one persistent local Ray for a CPT_HOME, with its dashboard.

Without it every `cpt submit` starts and stops its own Ray (seconds each time, and nothing to look
at between runs). `cpt cluster up` starts `ray start --head` once: token auth (a token generated
into CPT_HOME/secrets, readable by this user only), every port on 127.0.0.1, Ray's temp dir under
CPT_HOME, the dashboard on. Its address goes to CPT_HOME/cluster.json; while it is up, commands
that would start a Ray join it instead (an explicit --address/RAY_ADDRESS still wins).
`cpt cluster down` stops exactly that head's processes (never `ray stop`, which would stop every
Ray on the machine).
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
from store.errors import ClusterError

STATE = "cluster.json"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_state(root: Path) -> dict[str, Any] | None:
    """The recorded cluster of this CPT_HOME if its head still runs, else None."""
    path = root / STATE
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (FileNotFoundError, ValueError, KeyError, TypeError, ProcessLookupError, PermissionError):
        return None
    return state


def _token(root: Path) -> str:
    return (root / "secrets" / "ray-token").read_text().strip()


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
    state = {"pid": proc.pid, "gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}",
             "temp": str(temp), "started": time.time()}
    deadline = time.monotonic() + timeout
    while True:
        req = urllib.request.Request(state["dashboard"] + "/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        try:
            urllib.request.urlopen(req, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill(proc.pid, str(temp))
                raise ClusterError(f"ray head did not start (see {home.root / 'cluster.log'})") from None
            time.sleep(0.5)
    (home.root / STATE).write_text(json.dumps(state, indent=2))
    return state


def _kill(pid: int, temp: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    # Ray daemons started by the head carry its temp dir in their command lines
    subprocess.run(["pkill", "-TERM", "-f", f"--temp-dir={temp}"], check=False, capture_output=True)
    subprocess.run(["pkill", "-TERM", "-f", temp], check=False, capture_output=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", temp], capture_output=True).returncode != 0:
            return
        time.sleep(0.3)
    subprocess.run(["pkill", "-KILL", "-f", temp], check=False, capture_output=True)


def down(home) -> bool:
    """Stop the recorded head and its processes; False if none was running."""
    path = home.root / STATE
    state = read_state(home.root)
    path.unlink(missing_ok=True)
    if state is None:
        return False
    _kill(int(state["pid"]), state["temp"])
    return True
