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
    # the CLI's embedded Ray starts without its dashboard (~2 s less each; the dashboard's own tests use clusters)
    env = {**os.environ, "CPT_HOME": str(home), "PYTHONPATH": str(ROOT), "CPT_DASHBOARD": "0"}
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


def pause_outside_writes(db: Path, stop, resume, tries: int = 200) -> None:
    """Call `stop` (SIGSTOP a controller) at a moment it holds no write lock on the SQLite store `db`:
    a process frozen inside a write transaction blocks every other writer until it runs again
    (SQLite's lock has no holder timeout), which would fail the test's next command for a reason
    that is not the one it tests. Probed with BEGIN IMMEDIATE (WAL: only writers exclude writers)."""
    import sqlite3

    for _ in range(tries):
        stop()
        con = sqlite3.connect(db, timeout=0.2, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # stopped mid-write: let it finish, try again
            resume()
            time.sleep(0.02)
        finally:
            con.close()
    raise AssertionError(f"{db}: always write-locked when the controller was paused")


def round_plan(run_id: str, stage=0, rnd=0, attempt=1):
    """A small valid RoundPlan (store tests, retention tests)."""
    from store.records import RoundPlan

    return RoundPlan(run_id=run_id, stage_index=stage, round_index=rnd, attempt=attempt, seed=0,
                     weights={"a": 0.5, "b": 0.5}, domain_paths={"a": "/a", "b": "/b"}, eval_domains=["a", "b"],
                     stage_step_start=0, num_steps=5, stage_steps=10, global_step_start=0,
                     schedule={"kind": "cosine"}, model={}, tokenizer_hash="h", vocab_size=300, seq_len=8,
                     batch_size=2, optimizer={}, init_checkpoint=None, load_optimizer=False,
                     checkpoint_dir="/c", eval_batches=1)


def round_result():
    """A small valid RoundResult."""
    from store.records import RoundResult

    return RoundResult(checkpoint="/c", eval_losses={"a": 1.0, "b": 2.0}, eval_before=None,
                       train_losses=[3.0, 2.0], domain_train_losses={"a": 2.5}, lrs=[0.1, 0.2], tokens=32,
                       domain_tokens={"a": 32}, tokens_per_s=10.0, wall_s=1.0)
