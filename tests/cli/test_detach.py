"""`cpt submit --detach`: the controller runs as a Ray Job on an existing cluster (real `ray start`)."""

import os
import signal
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path_factory):
    """A separate head node with a job server, confined to its own temp dir and ports."""
    temp = Path("/tmp") / f"cpt-head-{os.getpid()}"
    dash = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus=1",
           f"--port={_free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp}", "--disable-usage-stats",
           "--include-dashboard=true"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.time() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("ray head did not start")
                time.sleep(1)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        # every process of this head carries its temp dir in its command line
        subprocess.run(["pkill", "-9", "-f", str(temp)], check=False)


def test_detached_run_finishes_on_the_cluster(tmp_path, synth, ray_head):
    from conftest import tiny_spec

    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(synth)))
    env = {**os.environ, "CPT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "cli.main", "--address", ray_head, "submit", str(spec), "--detach",
                          "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    run_id = json.loads(out.stdout)["run_id"]
    store = RunStore(f"sqlite:///{tmp_path / 'home' / 'store.db'}")
    deadline = time.time() + 240
    while store.get_run(run_id).status not in ("finished", "failed") and time.time() < deadline:
        time.sleep(1)
    assert store.get_run(run_id).status == "finished"
    assert len(store.rounds(run_id, status="finished")) == 4


def test_detach_to_unreachable_job_server_fails_cleanly(tmp_path, spec_file):
    env = {**os.environ, "CPT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "cli.main", "--address", f"http://127.0.0.1:{_free_port()}",
                          "submit", str(spec_file()), "--detach"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "cannot submit a Ray job" in out.stderr and "Traceback" not in out.stderr
    runs = RunStore(f"sqlite:///{tmp_path / 'home' / 'store.db'}").list_runs()
    assert [r.status for r in runs] == ["failed"]  # recorded, never left pending
