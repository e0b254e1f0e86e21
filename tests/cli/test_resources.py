"""Resources the cluster cannot give fail fast, naming the resource (exit 2), and the run is left
failed with the reason, not pending."""

import pytest

from conftest import GROUPS, recorded_run, tiny_spec
from store.errors import ClusterError

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("resources,match", [
    ({"workers": 2, "gpus_per_worker": 1}, "2 worker(s) x gpus_per_worker 1 = 2 GPUs, but the Ray cluster has 0"),
    ({"workers": 3, "cpus_per_worker": 1}, "3 worker(s) x cpus_per_worker 1 = 3 CPUs, but the Ray cluster has 2"),
])
def test_a_group_larger_than_the_cluster_fails_fast_and_is_recorded(tmp_path, synth, ray_local, resources, match):
    from orchestrator.controller import Controller

    home, store, run_id = recorded_run(tmp_path / "home", tiny_spec(synth, resources=resources, batch_size=6))
    with pytest.raises(ClusterError) as err:
        Controller(store, home, run_id, tracking=False, groups=GROUPS).run()
    assert err.value.exit_code == 2 and match in str(err.value)
    run = store.get_run(run_id)
    assert run.status == "failed" and match in run.error


def test_an_autoscaling_wait_says_so_and_times_out_naming_the_resource(tmp_path, synth, ray_local):
    """resources.wait_s: the controller waits (visibly) for the cluster to grow, then fails as above."""
    import time

    from orchestrator.controller import Controller

    spec = tiny_spec(synth, resources={"workers": 3, "cpus_per_worker": 1, "wait_s": 3}, batch_size=6)
    home, store, run_id = recorded_run(tmp_path / "home", spec)
    ctl = Controller(store, home, run_id, tracking=False, groups=GROUPS)
    said: list[str] = []
    ctl.reporter.message = said.append
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=r"3 CPUs, but the Ray cluster has 2;.*\(after waiting 3 s") as err:
        ctl.run()
    assert 3 <= time.monotonic() - t0 < 60 and err.value.exit_code == 2
    assert any(m.startswith("waiting up to 3 s for the cluster to grow: resources: 3 worker(s)") for m in said)
    assert store.get_run(run_id).status == "failed"


def test_the_wait_ends_when_the_cluster_has_grown():
    """The wait loop itself (orchestrator.placement.check_fits): a cluster that gains a node while the
    group waits is used as soon as it fits; without wait_s the same shortfall fails at once."""
    from orchestrator.placement import check_fits
    from store.configs import Resources

    sizes = iter([{"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 4.0}])
    slept, said = [], []
    check_fits(Resources(workers=3, wait_s=60), said.append,
               resources=lambda: next(sizes), sleep=slept.append)
    assert len(slept) == 2 and len(said) == 1 and "has 2" in said[0]
    with pytest.raises(ClusterError, match="set resources.wait_s"):
        check_fits(Resources(workers=3), said.append,
                   resources=lambda: {"CPU": 2.0}, sleep=slept.append)


def test_an_elastic_group_takes_the_most_ranks_that_fit_and_divide_the_batch():
    """orchestrator.placement.elastic_size: `workers: {min, max}` starts each group with the most
    ranks in [min, max] the alive nodes hold whose count the global batch divides over; with none
    that fits, the smallest (whose start then waits or fails naming the resource)."""
    from orchestrator.placement import elastic_size
    from store.configs import Resources

    res = Resources.model_validate({"workers": {"min": 2, "max": 8}, "cpus_per_worker": 2})
    assert res.elastic and res.worker_counts() == [8, 7, 6, 5, 4, 3, 2]
    divides_12 = lambda n: 12 % n == 0  # noqa: E731
    assert elastic_size(res, {"CPU": 16}, divides_12).workers == 6  # 8 and 7 do not divide 12
    assert elastic_size(res, {"CPU": 11}, divides_12).workers == 4  # 5 fits but does not divide
    assert elastic_size(res, {"CPU": 4}, divides_12).workers == 2
    assert elastic_size(res, {"CPU": 2}, divides_12).workers == 2  # nothing fits: the smallest
    fixed = Resources(workers=4)
    assert not fixed.elastic and fixed.worker_counts() == [4]
    assert elastic_size(fixed, {"CPU": 1}, divides_12).workers == 4
    assert Resources.model_validate({"workers": {"min": 2, "max": 2}}).elastic is False
