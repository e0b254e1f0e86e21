"""The store under contention and abuse: a bounded wait with a clear message (exit 2), never a raw
driver traceback; a CPT_HOME whose path looks like URL syntax is still just a path."""

import sqlite3
import time

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
