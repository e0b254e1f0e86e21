"""Live metrics survive a tracking outage: a real `mlflow server` is killed while metrics are being
logged and restarted; everything arrives, once, in order, and logging never blocks the caller."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.e2e


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(root, port):
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", (root / "art").as_uri(),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.3)


def _metrics(start, n):
    from mlflow.entities import Metric

    t0 = 1_790_000_000_000
    return [Metric("train_loss", 1.0 / (k + 1), t0 + 10 * k, k) for k in range(start, start + n)]


def test_metrics_logged_during_an_outage_are_backfilled_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    from mlflow.tracking import MlflowClient

    from orchestrator.live import LiveLogger

    port = _port()
    server = _server(tmp_path, port)
    client = MlflowClient(f"http://127.0.0.1:{port}")
    run_id = client.create_run(client.create_experiment("live")).info.run_id
    live = LiveLogger(client, run_id, retry_s=0.2, max_retry_s=1.0)
    live.log(_metrics(0, 150))
    assert live.flush(30)
    os.killpg(server.pid, signal.SIGKILL)  # the tracking server dies mid-run
    server.wait()
    t0 = time.monotonic()
    for k in range(150, 1650, 100):
        live.log(_metrics(k, 100))  # the training loop keeps logging: enqueue only, never blocked
    assert time.monotonic() - t0 < 1.0
    time.sleep(2)
    assert live.backlog == 1500 and live.last_error
    server = _server(tmp_path, port)  # back, same store
    try:
        assert live.flush(60) and live.close(5)
        history = client.get_metric_history(run_id, "train_loss")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1650))  # everything, once
    finally:
        os.killpg(server.pid, signal.SIGKILL)
