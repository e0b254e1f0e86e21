"""The store under contention and abuse: a bounded wait with a clear message (exit 2), never a raw
driver traceback; a CPT_HOME whose path looks like URL syntax is still just a path."""

import socket
import sqlite3
import time

import pytest

from tests_helpers import cpt


def test_a_locked_store_is_exit_2_within_the_configured_wait(tmp_path):
    from orchestrator.home import Home
    from store.runs import RunStore

    home = tmp_path / "home"
    store = RunStore(Home.from_env(home).store_url)
    run_id = store.create_run("r", "name: r", {"stages": []}, str(home / "runs"), [("s", 0, 4, 1)])
    store.engine.dispose()
    holder = sqlite3.connect(home / "store.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock (WAL readers still read)
    try:
        t0 = time.monotonic()
        out = cpt(home, "runs", "cancel", run_id, env={"CPT_STORE_TIMEOUT_S": "2"}, timeout=60)
        waited = time.monotonic() - t0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert out.returncode == 2, out.stderr
    assert "locked by another process" in out.stderr and "CPT_STORE_TIMEOUT_S" in out.stderr
    assert "Traceback" not in out.stderr and waited < 30
    assert cpt(home, "runs", "list").returncode == 0  # and fine once the lock is gone


def test_a_corrupt_store_is_exit_2_naming_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "store.db").write_bytes(b"this is not a database file at all" * 100)
    out = cpt(home, "runs", "list")
    assert out.returncode == 2 and "corrupt or not a cpt store" in out.stderr and "Traceback" not in out.stderr
    bad = cpt(home, "runs", "list", env={"CPT_STORE_TIMEOUT_S": "soon"})
    assert bad.returncode == 2 and "CPT_STORE_TIMEOUT_S" in bad.stderr


def test_a_cpt_home_that_looks_like_url_syntax_is_a_path(tmp_path):
    home = tmp_path / "we?ird%41home#x"
    assert cpt(home, "db", "upgrade").returncode == 0
    assert (home / "store.db").is_file()
    assert not (tmp_path / "we").exists() and not (tmp_path / "weAird").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [home.name]
    assert cpt(home, "runs", "list", "--json").stdout.strip() == "[]"


@pytest.mark.postgres
def test_a_postgres_store_that_holds_a_lock_or_does_not_answer_is_exit_2_in_bounded_time(tmp_path, pg_server):
    """Only SQLite had a bound before: a lock held in PostgreSQL, or a server that accepts the
    connection and never answers, hung every command."""
    from sqlalchemy import create_engine, text

    import pgserver
    from store.db import upgrade
    from store.runs import RunStore

    store_url = pgserver.fresh_database(pg_server, "locked")
    upgrade(store_url)

    store = RunStore(store_url, migrate=False)
    run_id = store.create_run("r", "name: r", {"stages": []}, str(tmp_path / "runs"), [("s", 0, 4, 1)])
    store.engine.dispose()
    holder = create_engine(store_url).connect()
    tx = holder.begin()
    holder.execute(text("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"))  # another session holds the table
    try:
        t0 = time.monotonic()
        out = cpt(tmp_path, "--store", store_url, "runs", "cancel", run_id, env={"CPT_STORE_TIMEOUT_S": "2"},
                  timeout=60)
        waited = time.monotonic() - t0
    finally:
        tx.rollback()
        holder.close()
    assert out.returncode == 2 and "locked by another process" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and waited < 30
    assert cpt(tmp_path, "--store", store_url, "runs", "list").returncode == 0

    with socket.socket() as mute:  # accepts connections (the kernel's backlog) and never says a word
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        url = f"postgresql+psycopg2://u:s3cr3t@127.0.0.1:{mute.getsockname()[1]}/x"
        t0 = time.monotonic()
        out = cpt(tmp_path, "--store", url, "runs", "list", env={"CPT_STORE_TIMEOUT_S": "2"}, timeout=60)
        waited = time.monotonic() - t0
    assert out.returncode == 2 and "cannot open run store" in out.stderr and "127.0.0.1" in out.stderr, out.stderr
    assert "s3cr3t" not in out.stderr and "Traceback" not in out.stderr and waited < 30
