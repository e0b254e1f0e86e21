"""Resources the cluster cannot give fail fast, naming the resource (exit 2), and the run is left
failed with the reason, not pending."""

import pytest

from conftest import recorded_run, tiny_spec
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
        Controller(store, home, run_id, tracking=False).run()
    assert err.value.exit_code == 2 and match in str(err.value)
    run = store.get_run(run_id)
    assert run.status == "failed" and match in run.error
