"""Resources the cluster cannot give fail fast, naming the resource (exit 2), and the run is left
failed with the reason, not pending."""

import json

import pytest
import yaml

from conftest import tiny_spec
from tests_helpers import cpt

pytestmark = pytest.mark.e2e


def test_a_group_larger_than_the_cluster_fails_fast_and_is_recorded(tmp_path, synth):
    home = tmp_path / "home"
    spec = tmp_path / "gpu.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(synth, resources={"workers": 2, "gpus_per_worker": 1})))
    out = cpt(home, "submit", str(spec), "--quiet", timeout=240)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "2 worker(s) x gpus_per_worker 1 = 2 GPUs, but the Ray cluster has 0" in out.stderr
    runs = json.loads(cpt(home, "runs", "list", "--json").stdout)
    assert [r["status"] for r in runs] == ["failed"] and "gpus_per_worker" in runs[0]["error"]
