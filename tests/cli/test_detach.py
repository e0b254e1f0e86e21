"""`cpt submit --detach`: the controller runs as a Ray Job on an existing cluster (real `ray start`)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from store.runs import RunStore

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_detached_run_finishes_on_the_cluster(tmp_path, synth, ray_head):
    from conftest import tiny_spec

    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(synth)))
    store_url = f"sqlite:///{tmp_path / 'elsewhere' / 'store.db'}"  # explicit: travels as a secret file
    env = {**os.environ, "CPT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT),
           "RAY_AUTH_TOKEN": ray_head.token, "CPT_STORE_URL": store_url}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "cli.main", "--address", ray_head.url, "submit", str(spec),
                          "--detach", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    store = RunStore(store_url)
    deadline = time.time() + 240
    while store.get_run(run_id).status not in ("finished", "failed") and time.time() < deadline:
        time.sleep(1)
    assert store.get_run(run_id).status == "finished"
    assert len(store.rounds(run_id, status="finished")) == 4
    url_file = tmp_path / "home" / "secrets" / f"store-url-{run_id}"
    while url_file.exists() and time.time() < deadline:  # removed by the job once its run has ended
        time.sleep(0.5)
    assert not url_file.exists()
    # what the dashboard and `ray job list` show: neither the store URL nor the token
    job = json.dumps(ray_head.get(f"/api/jobs/{json.loads(out.stdout)['job_id']}"))
    assert "store.db" not in job and ray_head.token not in job


def test_detach_to_unreachable_job_server_fails_cleanly(tmp_path, spec_file):
    env = {**os.environ, "CPT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "cli.main", "--address", f"http://127.0.0.1:{closed}",
                          "submit", str(spec_file()), "--detach"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "cannot submit a Ray job" in out.stderr and "Traceback" not in out.stderr
    runs = RunStore(f"sqlite:///{tmp_path / 'home' / 'store.db'}").list_runs()
    assert [r.status for r in runs] == ["failed"]  # recorded, never left pending
