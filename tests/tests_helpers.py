"""Small helpers shared by tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def dump(synth: dict, **over) -> str:
    from conftest import tiny_spec

    return yaml.safe_dump(tiny_spec(synth, **over))


def final_losses(store, run_id: str):
    """(stage, round) of every finished round, and the last round's eval losses."""
    done = store.rounds(run_id, status="finished")
    return [(r.stage_index, r.round_index) for r in done], done[-1].eval_losses


def children(pid: int) -> list[int]:
    """The pids of a process's children (none once it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def cli_env(home: Path, extra: dict | None = None) -> dict:
    env = {**os.environ, "CPT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return {**env, **(extra or {})}


def cpt(home: Path, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI to completion in a subprocess."""
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=cli_env(home, env), capture_output=True,
                          text=True, timeout=timeout)


def cpt_until_round_runs(home: Path, args: list[str], finished: int, timeout: float = 240, after: int = 0,
                         env: dict | None = None):
    """Start the CLI in its own process group and return (proc, store, run_id) once `finished`
    rounds are finished and a round attempt recorded after the first `after` ones is running."""
    from sqlalchemy.exc import OperationalError

    from store.runs import RunStore

    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=cli_env(home, env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    store = None
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (home / "store.db").exists():
            store = store or RunStore(f"sqlite:///{home / 'store.db'}", migrate=False)
            try:
                runs = store.list_runs()
            except OperationalError:  # the subprocess is still migrating the new store
                runs = []
            if runs and len(store.rounds(runs[0].id, status="finished")) >= finished \
                    and any(r.status == "running" for r in store.rounds(runs[0].id)[after:]):
                return proc, store, runs[0].id
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the round never started")
