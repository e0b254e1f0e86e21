"""orchestrator/cluster.py without a cluster: the job-submission retry and the address check."""

import pytest

from orchestrator.cluster import check_address, retry_agent_busy
from rayhead import free_port
from store.errors import ClusterError


def test_a_job_server_without_its_agent_yet_is_retried_then_answers():
    """A head that has just started serves its API before its job agent (CI met it: "No available
    agent to submit job, please try again later."); nothing else is retried."""
    calls, slept = [], []

    def submit():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("Request failed with status code 500: No available agent to submit job, "
                               "please try again later..")
        return "raysubmit_1"

    assert retry_agent_busy(submit, wait_s=30, sleep=slept.append) == "raysubmit_1"
    assert len(calls) == 3 and slept == [1.0, 1.0]

    def refused():
        raise RuntimeError("Request failed with status code 401: Unauthorized")

    with pytest.raises(RuntimeError, match="401"):
        retry_agent_busy(refused, wait_s=30, sleep=slept.append)
    assert len(slept) == 2  # not retried

    def never():
        raise RuntimeError("No available agent to submit job")

    with pytest.raises(RuntimeError, match="No available agent"):
        retry_agent_busy(never, wait_s=0, sleep=slept.append)


def test_ray_addresses_are_checked_before_ray_is_asked():
    with pytest.raises(ClusterError, match="nothing answers there"):
        check_address(f"127.0.0.1:{free_port()}")
    for bad in ("bogus", "127.0.0.1:x", ":6379", "host:70000"):
        with pytest.raises(ClusterError, match="not a Ray address"):
            check_address(bad)
    check_address("auto")  # left to Ray, as are URIs
    check_address("ray://head:10001")
