"""Ray: start an embedded local cluster or connect to an existing one, and submit detached runs as Ray Jobs.

Secure by default: every Ray this module starts or joins uses token authentication
(`RAY_AUTH_MODE=token`; `ray.init` makes a token for a local cluster, a cluster started with
`ray start` needs `ray get-auth-token --generate` or `RAY_AUTH_TOKEN`), and an embedded local
cluster listens on 127.0.0.1 only, so nobody else on the network can reach its ports.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from orchestrator.home import Home
from store.errors import ClusterError, first_line

LOOPBACK = "127.0.0.1"
# Ray starts its worker processes at niceness 15, so a training rank yields to every nice-0
# process on the host (beside two busy loops a rank kept 0.8% of its speed; benchmarks/scale.py
# --only contention). In clusters cpt starts, the ranks are the workload: they run at the
# priority of Ray's own daemons instead.
WORKER_NICENESS = 0


MIN_RAY = (2, 52)  # token authentication; older Ray would run with none, silently


def secure_env() -> None:
    """Token auth on for this process and the Ray processes it starts; it cannot be turned off
    (any RAY_AUTH_MODE but token is refused) and needs a Ray that has it."""
    from importlib.metadata import version

    found = version("ray")
    if tuple(int(x) for x in found.split(".")[:2] if x.isdigit()) < MIN_RAY:
        raise ClusterError(f"Ray {found} has no token authentication; cpt needs ray>={MIN_RAY[0]}.{MIN_RAY[1]}")
    mode = os.environ.setdefault("RAY_AUTH_MODE", "token")
    if mode != "token":
        raise ClusterError(f"RAY_AUTH_MODE={mode}: cpt runs Ray with token authentication only (unset it)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def check_enforced(dashboard: str | None, address: str) -> None:
    """ClusterError if the cluster answers a request that carries no token: cpt's own token would
    be worthless there (anyone who can reach it runs code on it). A cluster whose dashboard cannot be
    reached is taken as it is (its jobs API is then closed to everyone)."""
    import urllib.error
    import urllib.request

    if not dashboard:
        return
    url = (dashboard if "://" in dashboard else f"http://{dashboard}").rstrip("/") + "/api/jobs/"
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=5):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return
    except OSError:
        return
    raise ClusterError(f"--address {address}: this Ray cluster does not enforce token authentication (its "
                       f"dashboard answered a request without a token); start it with RAY_AUTH_MODE=token "
                       f"and a token (`ray get-auth-token --generate`), or use `cpt cluster up`")


def _loopback_only() -> None:
    # On Linux Ray resolves 127.0.0.1 to the host's outward address and binds its gRPC servers
    # there; with "clusters" off (what Ray does on laptops) the node address stays loopback and
    # every core port (GCS, raylet, workers, object manager) listens on 127.0.0.1 only.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray already imported: the flag was read at import time
        constants.ENABLE_RAY_CLUSTER = False


def is_loopback(address: str) -> bool:
    """Whether a Ray address (host:port, ray://host:port, http://host:port) points at this machine's loopback."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def check_address(address: str, timeout_s: float = 10.0) -> None:
    """A GCS address (host:port) that is malformed or that nothing answers on is ClusterError at
    once (ray.init would retry it for minutes); `submit` asks before it records a run. `auto` and
    URIs (`ray://`) are left to Ray."""
    import socket

    if "://" in address or address == "auto":
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--address {address}: not a Ray address (HOST:PORT of the head's GCS, e.g. "
                           f"10.0.0.1:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"--address {address}: nothing answers there ({exc.strerror or exc}); is the "
                           f"Ray head running (`cpt cluster status`, `ray start --head`)?") from None


def connect(home: Home, num_cpus: int | None = None, dashboard: bool = True,
            run: dict[str, str] | None = None) -> dict[str, Any]:
    """Connect to RAY_ADDRESS/--address, or start a local Ray confined to CPT_HOME and 127.0.0.1
    (dashboard on, 127.0.0.1). Idempotent. `run` ({run_id, run_name}) goes into the Ray job's
    metadata (`job_name` is the run id: the dashboard's Jobs page shows it as the job's name).
    Returns the GCS address, the job id and the dashboard URL (None where unknown: a remote
    cluster's dashboard is its operator's)."""
    secure_env()
    if not home.ray_address or is_loopback(home.ray_address):
        _loopback_only()
    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return {"address": ctx.gcs_address, "job_id": ctx.get_job_id(), "dashboard": None}
    from ray.job_config import JobConfig

    job_config = JobConfig(metadata={**({"job_name": run["run_id"]} if run else {}),
                                     **{f"cpt_{k}": v for k, v in (run or {}).items()}})
    if home.ray_address:
        check_address(home.ray_address)
        try:
            ctx = ray.init(address=home.ray_address, namespace="cpt", log_to_driver=False, job_config=job_config)
        except (ValueError, ConnectionError) as exc:  # a malformed address; a GCS that went away meanwhile
            raise ClusterError(f"--address {home.ray_address}: cannot connect to Ray "
                               f"({first_line(exc, 300) or type(exc).__name__})") from None
        from orchestrator.local_cluster import read_state

        local = read_state(home.root)  # a `cpt cluster up` cluster: its dashboard is known
        url = local["dashboard"] if local and local["gcs"] == home.ray_address else None
        try:
            check_enforced(url or ctx.dashboard_url, home.ray_address)
        except ClusterError:
            ray.shutdown()
            raise
    else:
        home.ray_temp.mkdir(parents=True, exist_ok=True)
        if os.environ.get("CPT_DASHBOARD") == "0":  # nobody watches (CI, batch jobs): no web server, a faster start
            dashboard = False
        ctx = ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=256 * 1024**2,
                       _temp_dir=str(home.ray_temp), _node_ip_address=LOOPBACK, include_dashboard=dashboard,
                       dashboard_host=LOOPBACK, namespace="cpt", log_to_driver=False, configure_logging=False,
                       job_config=job_config, _system_config={"worker_niceness": WORKER_NICENESS})
        url = f"http://{ctx.dashboard_url}" if ctx.dashboard_url else None
    return {"address": ctx.address_info.get("gcs_address"), "job_id": ray.get_runtime_context().get_job_id(),
            "dashboard": url}


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def submit_job(address: str, entrypoint: str, env: dict[str, str], run_id: str | None = None) -> str:
    """Submit a detached controller as a Ray Job (needs the cluster's dashboard/job server).

    The client authenticates with the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token); nothing secret goes into the entrypoint or `env`, which the dashboard shows."""
    secure_env()
    if "://" in address:  # the job server itself: it must refuse what carries no token
        check_enforced(address, address)
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    return retry_agent_busy(lambda: client.submit_job(
        entrypoint=entrypoint, runtime_env={"env_vars": env},
        metadata={"job_name": run_id, "cpt_run_id": run_id} if run_id else None))


AGENT_WAIT_S = 60.0


def retry_agent_busy(submit: Callable[[], str], wait_s: float = AGENT_WAIT_S,
                     sleep: Callable[[float], None] = time.sleep) -> str:
    """`submit()`, retried while the job server answers "No available agent to submit job": a head
    that has just started (`cpt cluster up`, `ray start`) serves its API seconds before its job
    agent is up; the server created no job, so trying again is safe. Any other error, or the
    agent still missing after `wait_s`, is raised as it came."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return submit()
        except Exception as exc:
            if "No available agent" not in str(exc) or time.monotonic() >= deadline:
                raise
        sleep(1.0)
