"""Ray is secure by default: token authentication on, every port of a local cluster on 127.0.0.1."""

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _listening(pids: list[int]) -> list[str]:
    """Local addresses the given processes listen on (TCP)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]


def _loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
    return host.startswith("127.") or host == "::1"


def _connects(gcs: str, token: str | None) -> subprocess.CompletedProcess:
    """A fresh Ray client process connecting to `gcs`: without auth (token None) or with the token."""
    code = f"import ray; ray.init(address={gcs!r}, log_to_driver=False); print('connected')"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep 127.0.0.1 (else Ray swaps in the host's address)
    env["RAY_AUTH_MODE"] = "disabled" if token is None else "token"
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_unauthenticated_clients_are_refused(ray_head):
    for token in (None, "not-the-token"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            ray_head.get("/api/jobs/", token=token)
        assert exc.value.code in (401, 403)
    assert isinstance(ray_head.get("/api/jobs/"), list)  # the right token is let in
    out = _connects(ray_head.gcs, None)
    assert out.returncode != 0 and "connected" not in out.stdout
    out = _connects(ray_head.gcs, ray_head.token)
    assert out.returncode == 0 and "connected" in out.stdout, out.stderr[-2000:]


def test_started_head_listens_on_loopback_only(ray_head):
    import time

    deadline = time.time() + 30  # the dashboard answers before every process has opened its ports
    while len(addrs := _listening(ray_head.pids())) < 4 and time.time() < deadline:
        time.sleep(0.5)
    assert len(addrs) >= 4 and all(map(_loopback, addrs)), addrs


def test_embedded_cluster_refuses_clients_without_its_token_and_listens_on_loopback_only(ray_local):
    import ray

    node = ray._private.worker._global_node
    dashboard = node.address_info["webui_url"]
    assert dashboard.startswith("127.0.0.1:")
    for token in (None, "not-the-token"):  # the cluster itself refuses a client without its token
        req = urllib.request.Request(f"http://{dashboard}/api/jobs/")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req, timeout=10)
        assert exc.value.code in (401, 403)
    assert ray.get(ray.remote(num_cpus=0)(lambda: os.environ.get("RAY_AUTH_MODE")).remote()) == "token"
    pids = [int(p) for p in subprocess.run(["pgrep", "-f", node.get_session_dir_path()], capture_output=True,
                                           text=True).stdout.split()]
    addrs = _listening([*pids, node.all_processes["gcs_server"][0].process.pid])
    assert len(addrs) >= 3 and all(map(_loopback, addrs)), addrs


def test_nothing_outside_tests_switches_ray_auth_off():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    folders = ("orchestrator", "workers", "mixers", "store", "corpus", "cli", "benchmarks")
    files = [p for d in folders for p in (root / d).rglob("*") if p.suffix in (".py", ".sh")]
    files += [root / "Makefile", root / ".ci" / "run"]
    assert len(files) > 20
    for path in files:
        text = path.read_text()
        assert "disabled" not in text or "RAY_AUTH_MODE" not in text, path


def test_cpt_refuses_a_cluster_without_token_auth_and_auth_cannot_be_turned_off(tmp_path, spec_file):
    """M7: auth depended on the installed Ray and on the cluster's own settings. cpt needs a Ray
    with token auth, refuses RAY_AUTH_MODE=disabled, and refuses to join (or submit a job to) a
    cluster whose dashboard answers without a token (exit 2; a recorded run is marked failed)."""
    import tomllib

    from rayhead import start_head, stop_head
    from tests_helpers import cpt

    pins = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "ray[default]>=2.52" in pins
    head, proc = start_head(auth=False)
    try:
        with urllib.request.urlopen(head.url + "/api/jobs/", timeout=10) as resp:  # open to anyone
            assert resp.status == 200
        home = tmp_path / "home"
        for args in (["--address", head.gcs, "submit", str(spec_file())],
                     ["--address", head.url, "submit", str(spec_file()), "--detach"]):
            out = cpt(home, *args, env={"RAY_AUTH_TOKEN": head.token}, timeout=180)
            assert out.returncode == 2 and "does not enforce token authentication" in out.stderr, out.stderr[-2000:]
            assert "Traceback" not in out.stderr
    finally:
        stop_head(head, proc)
    out = cpt(tmp_path / "h2", "submit", str(spec_file()), env={"RAY_AUTH_MODE": "disabled"}, timeout=180)
    assert out.returncode == 2 and "RAY_AUTH_MODE=disabled" in out.stderr, out.stderr[-2000:]
