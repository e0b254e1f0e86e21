"""A private PostgreSQL server for the test session: Debian's postgresql binaries, initdb + pg_ctl
in a temp dir, listening on 127.0.0.1 only, stopped at the end (by its own pid file, never
touching another server on the machine)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)")
    return found[-1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: run them as the package's `postgres` user
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start() -> tuple[str, Path]:
    """(SQLAlchemy URL of an empty database `cpt`, data dir) of a fresh server."""
    root = Path(tempfile.mkdtemp(prefix="cpt-pg-"))
    data, port = root / "data", _port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(_as_postgres([_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "cpt", "-E", "UTF8"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres([_bin("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                                 "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres([_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "cpt", "cpt"]),
                   check=True, capture_output=True)
    return f"postgresql+psycopg2://cpt@127.0.0.1:{port}/cpt", data


def fresh_database(url: str, name: str) -> str:
    """A new empty database on the same server (each test gets its own)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"


def stop(data: Path) -> None:
    subprocess.run(_as_postgres([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                   capture_output=True)
    deadline = time.time() + 10
    while (data / "postmaster.pid").exists() and time.time() < deadline:
        time.sleep(0.1)
    shutil.rmtree(data.parent, ignore_errors=True)
