"""`cpt ui` stops its MLflow server (and the server's workers) when it is stopped."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests_helpers import children, cli_env

pytestmark = pytest.mark.e2e


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGINT and SIGHUP take the same path
def test_stopping_cpt_ui_stops_the_server(tmp_path, sig):
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "ui", "--port", str(port)],
                            env=cli_env(tmp_path / "home"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "MLflow UI did not start"
            time.sleep(0.3)
        (server,) = children(proc.pid)  # the server leads its own process group (its workers in it)
        assert os.getpgid(server) == server and children(server)
        proc.send_signal(sig)
        assert proc.wait(30) == 130
        deadline = time.monotonic() + 20
        while _group_alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(server) and not _listening(port)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
