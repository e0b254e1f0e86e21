"""Whether the cluster can hold a worker group: checked before Ray Train places it, with a
message naming the resource it lacks (and an optional wait for an autoscaling cluster to grow)."""

from __future__ import annotations

import time
from collections.abc import Callable

from store.configs import Resources
from store.errors import ClusterError


def shortfall(res: Resources, have: dict[str, float]) -> str | None:
    """What the group needs that the cluster does not have (a message naming the resource), or None."""
    n = res.workers
    for key, field in (("CPU", "cpus_per_worker"), ("GPU", "gpus_per_worker")):
        each = getattr(res, field)
        if n * each > have.get(key, 0) + 1e-9:
            return (f"resources: {n} worker(s) x {field} {each:g} = {n * each:g} {key}s, but the Ray cluster has "
                    f"{have.get(key, 0):g}; lower resources.workers or resources.{field}, or add nodes")
    return None


def elastic_size(res: Resources, have: dict[str, float], usable: Callable[[int], bool]) -> Resources:
    """An elastic group's resources for now: the most ranks in [min, max] that the cluster's
    CPUs/GPUs (`have`, alive nodes) hold and the global batch divides over (`usable`). With none
    that fits, the smallest usable size (whose start then waits or fails, naming what is short)."""
    counts = [n for n in res.worker_counts() if usable(n)]
    fits = [n for n in counts if shortfall(res.model_copy(update={"workers": n}), have) is None]
    return res.model_copy(update={"workers": (fits or counts[-1:])[0]})


def check_fits(res: Resources, report: Callable[[str], None] | None = None,
               resources: Callable[[], dict[str, float]] | None = None,
               sleep: Callable[[float], None] = time.sleep) -> None:
    """Fail fast, naming the resource, when the cluster cannot hold the group; with
    `resources.wait_s` > 0 (an autoscaling cluster) wait that long for it to grow first, saying so."""
    if resources is None:
        import ray

        resources = ray.cluster_resources
    wait_s = res.wait_s
    deadline = time.monotonic() + wait_s
    said = False
    while (short := shortfall(res, resources())) is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClusterError(short + (f" (after waiting {wait_s:g} s for it to grow: resources.wait_s)"
                                        if wait_s else " (an autoscaling cluster: set resources.wait_s)"))
        if report is not None and not said:
            report(f"waiting up to {wait_s:g} s for the cluster to grow: {short}")
            said = True
        sleep(min(2.0, left))
