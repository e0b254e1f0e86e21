"""`cpt cluster up`: one persistent local Ray per CPT_HOME that runs join (no Ray start per
submit), with a token-protected dashboard on 127.0.0.1; `down` stops only its own processes."""

import json
import subprocess
import urllib.error
import urllib.request

import pytest
import yaml

from conftest import tiny_spec
from tests_helpers import cpt

pytestmark = pytest.mark.e2e


def test_cluster_up_submit_joins_it_and_down_stops_it(tmp_path, synth):
    home = tmp_path / "home"
    up = cpt(home, "cluster", "up", "--num-cpus", "2", "--json", timeout=180)
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    try:
        token = (home / "secrets" / "ray-token").read_text().strip()
        assert oct((home / "secrets" / "ray-token").stat().st_mode & 0o777) == "0o600"
        with pytest.raises(urllib.error.HTTPError):  # the dashboard wants the token
            urllib.request.urlopen(state["dashboard"] + "/api/jobs/", timeout=10)
        req = urllib.request.Request(state["dashboard"] + "/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        assert urllib.request.urlopen(req, timeout=10).status == 200
        assert json.loads(cpt(home, "cluster", "up", "--json").stdout)["pid"] == state["pid"]  # idempotent

        spec = tmp_path / "run.yaml"
        spec.write_text(yaml.safe_dump(tiny_spec(synth)))
        run = cpt(home, "submit", str(spec), "--quiet", "--json", timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        # the controller joined the running cluster (its driver log is in that cluster's session)
        from pathlib import Path

        sessions = [p for p in Path(state["temp"]).glob("session_2*") if p.is_dir()]
        assert len(sessions) == 1  # no second Ray was started in this CPT_HOME
        assert list(sessions[0].glob("logs/python-core-driver-*.log"))
        assert json.loads(cpt(home, "cluster", "status", "--json").stdout)["pid"] == state["pid"]
    finally:
        down = cpt(home, "cluster", "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert subprocess.run(["pgrep", "-f", state["temp"]], capture_output=True).returncode != 0  # all gone
    assert cpt(home, "cluster", "status", "--json").stdout.strip() == "null"
