"""Two Ray nodes on one machine, each a test host in a network namespace of its own.

A node that joins a cluster on 127.0.0.1 is not a second host: Ray rewrites loopback addresses
when clusters are on and refuses to join when they are off. So the head and the second node each
get a network namespace of their own, joined by a veth pair (10.231.0.1 and 10.231.0.2); all the
cluster's traffic stays between the two namespaces the test made, and everything is torn down
(processes killed by namespace, namespaces deleted) however the test ends. Needs root and `ip`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HEAD_IP, NODE_IP, PORT = "10.231.0.1", "10.231.0.2", 6379
RAY = str(Path(sys.executable).parent / "ray")


def unavailable() -> str | None:
    """Why two namespaced nodes cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class TwoNodes:
    head_ns: str
    """Namespace of the head node (and of the drivers the test starts)."""
    node_ns: str
    """Namespace of the second node."""
    gcs: str
    """The head's GCS address, for RAY_ADDRESS."""
    env: dict
    """Environment with the cluster's token (what a driver needs)."""
    temp: Path
    """Ray temp dirs of both nodes."""

    def popen(self, ns: str, cmd: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], env={**self.env, **(env or {})}, **kw)

    def pids(self, ns: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def commands(self, ns: str) -> list[str]:
        """Command lines of the namespace's processes (Ray names its workers `ray::Class.method`)."""
        out = []
        for pid in self.pids(ns):
            with contextlib.suppress(OSError):
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        return out

    def kill(self, ns: str) -> list[str]:
        """SIGKILL every process of a namespace (a node dying at once); returns their command lines."""
        seen = self.commands(ns)
        for pid in self.pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return seen

    def cpus(self) -> float:
        """CPUs the head's GCS currently counts (alive nodes only)."""
        out = subprocess.run(["ip", "netns", "exec", self.head_ns, RAY, "status", f"--address={self.gcs}"],
                             env=self.env, capture_output=True, text=True, timeout=60).stdout
        line = next((ln for ln in out.splitlines() if ln.strip().endswith(" CPU") and "/" in ln), "")
        return float(line.split("/")[1].split()[0]) if line else 0.0


def _start(nodes: TwoNodes, ns: str, args: list[str]) -> None:
    proc = nodes.popen(ns, [RAY, "start", "--disable-usage-stats", f"--object-store-memory={128 * 1024**2}", *args],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start in {ns} failed:\n{out[-3000:]}")


def rejoin(nodes: TwoNodes, cpus: int, timeout: float = 60) -> None:
    """Start the second node again after `kill` (capacity coming back): once the head has declared
    the old one dead, a new node on the same address joins."""
    deadline = time.monotonic() + timeout
    before = nodes.cpus()
    _start(nodes, nodes.node_ns, [f"--address={nodes.gcs}", f"--node-ip-address={NODE_IP}", f"--num-cpus={cpus}",
                                  f"--temp-dir={nodes.temp / 'b-again'}"])
    while nodes.cpus() < before + cpus:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the second node did not rejoin within {timeout:g} s")
        time.sleep(1)


@contextlib.contextmanager
def two_nodes(head_cpus: int = 2, node_cpus: int = 1, timeout: float = 60) -> Iterator[TwoNodes]:
    tag = secrets.token_hex(3)
    a, b = f"cpt-{tag}-a", f"cpt-{tag}-b"
    temp = Path("/tmp") / f"cpt-nodes-{tag}"
    # fast failure detection: a dead node is declared dead after ~3 s instead of ~30 s
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    for key in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "CPT_HOME"):
        env.pop(key, None)
    nodes = TwoNodes(a, b, f"{HEAD_IP}:{PORT}", env, temp)
    try:
        _ip("netns", "add", a)
        _ip("netns", "add", b)
        _ip("link", "add", f"cv{tag}a", "type", "veth", "peer", "name", f"cv{tag}b")
        for ns, dev, addr in ((a, f"cv{tag}a", HEAD_IP), (b, f"cv{tag}b", NODE_IP)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _start(nodes, a, ["--head", f"--node-ip-address={HEAD_IP}", f"--port={PORT}", f"--num-cpus={head_cpus}",
                          "--include-dashboard=false", f"--temp-dir={temp / 'a'}"])
        _start(nodes, b, [f"--address={nodes.gcs}", f"--node-ip-address={NODE_IP}", f"--num-cpus={node_cpus}",
                          f"--temp-dir={temp / 'b'}"])
        deadline = time.monotonic() + timeout
        while nodes.cpus() < head_cpus + node_cpus:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the second node did not join within {timeout:g} s")
            time.sleep(1)
        yield nodes
    finally:
        for ns in (b, a):
            with contextlib.suppress(Exception):
                nodes.kill(ns)
        time.sleep(0.5)
        for ns in (b, a):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(temp, ignore_errors=True)
