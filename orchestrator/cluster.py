"""Ray: start an embedded local cluster or connect to an existing one; run rounds as tasks."""

from __future__ import annotations

import os
from typing import Any

from orchestrator.home import Home


def connect(home: Home, num_cpus: int | None = None, dashboard: bool = False) -> dict[str, Any]:
    """Connect to RAY_ADDRESS/--address, or start a local Ray confined to CPT_HOME. Idempotent."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address, "dashboard": None}
    if home.ray_address:
        ctx = ray.init(address=home.ray_address, namespace="cpt", log_to_driver=False)
    else:
        home.ray_temp.mkdir(parents=True, exist_ok=True)
        ctx = ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=256 * 1024**2,
                       _temp_dir=str(home.ray_temp), include_dashboard=dashboard, dashboard_host="127.0.0.1",
                       namespace="cpt", log_to_driver=False, configure_logging=False)
    return {"address": ctx.address_info.get("gcs_address"), "dashboard": ctx.dashboard_url or None}


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def submit_round(plan, cpus: float, gpus: float):
    """Run workers.round.execute_round(plan) as a Ray task; retries are the controller's job."""
    import ray

    from workers.round import execute_round

    remote = ray.remote(execute_round).options(num_cpus=cpus, num_gpus=gpus, max_retries=0,
                                               name=f"round-s{plan.stage_index}-r{plan.round_index}")
    return remote.remote(plan)


def submit_job(address: str, entrypoint: str, env: dict[str, str]) -> str:
    """Submit a detached controller as a Ray Job (needs the cluster's dashboard/job server)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    return client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env})
