"""A real `ray start --head` for tests: token auth on, loopback only, its own temp dir and ports."""

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
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    url: str
    """Dashboard / job server URL."""
    gcs: str
    """GCS address (host:port) for `ray.init(address=...)` and `ray start --address`."""
    token: str
    """The cluster's auth token."""
    temp: Path
    """Ray's temp dir; every process of the head carries it in its command line."""
    env: dict
    """Environment the head was started with (token included)."""

    def get(self, path: str, token: str | None = "") -> dict:
        """GET a dashboard API path; token "" = the cluster's, None = no Authorization header."""
        req = urllib.request.Request(self.url + path)
        token = self.token if token == "" else token
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-f", str(self.temp)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


def start_head(num_cpus: int = 1, timeout: float = 90, auth: bool = True) -> tuple[RayHead, subprocess.Popen]:
    """A `ray start --head` on 127.0.0.1 with token auth (`auth=False`: a cluster someone started
    without it, what cpt must refuse to join)."""
    temp = Path("/tmp") / f"cpt-head-{os.getpid()}-{secrets.token_hex(3)}"
    dash, port = free_port(), free_port()
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token" if auth else "disabled", "RAY_AUTH_TOKEN": token,
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}",
           "--node-ip-address=127.0.0.1", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp}", "--disable-usage-stats",
           "--include-dashboard=true", f"--object-store-memory={128 * 1024**2}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    head = RayHead(f"http://127.0.0.1:{dash}", f"127.0.0.1:{port}", token, temp, env)
    deadline = time.time() + timeout
    while True:
        try:
            head.get("/api/jobs/")
            return head, proc
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.time() > deadline or proc.poll() is not None:
                stop_head(head, proc)
                raise RuntimeError("ray head did not start") from None
            time.sleep(1)


def stop_head(head: RayHead, proc: subprocess.Popen) -> None:
    """Stop this head only (never `ray stop`, which kills every Ray on the machine)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-9", "-f", str(head.temp)], check=False)
