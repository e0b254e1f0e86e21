import pytest

from store.errors import InvalidTransition, NotFound, StoreUnreachable
from store.runs import RunStore
from tests_helpers import round_plan, round_result


@pytest.fixture
def store(store_url) -> RunStore:
    return RunStore(store_url)


def _run(store: RunStore) -> str:
    return store.create_run("r", "name: r", {"stages": []}, "/w", [("s1", 0, 10, 2)])


def test_run_lifecycle_writes_events(store):
    run_id = _run(store)
    assert store.get_run(run_id).status == "pending"
    store.set_run_status(run_id, "running")
    store.set_run_status(run_id, "finished")
    assert [(e.from_state, e.to_state) for e in store.events(run_id)] == [
        (None, "pending"), ("pending", "running"), ("running", "finished")]
    with pytest.raises(InvalidTransition):
        store.set_run_status(run_id, "running")


def test_round_commit_point_and_plan_roundtrip(store):
    run_id = _run(store)
    plan = round_plan(run_id)
    rid = store.plan_round(plan, {"kind": "cosine"}, {"n": 1})
    row = store.rounds(run_id)[0]
    assert row.status == "planned" and row.plan == plan
    store.start_round(rid)
    assert store.finished_round(run_id, 0, 0) is None
    store.finish_round(rid, round_result())
    done = store.finished_round(run_id, 0, 0)
    assert done.eval_losses == {"a": 1.0, "b": 2.0} and done.train_loss == 2.5 and done.mixer_state == {"n": 1}
    assert done.result == round_result()
    with pytest.raises(InvalidTransition):
        store.fail_round(rid, "late failure")


def test_attempts_and_abandon(store):
    run_id = _run(store)
    rid = store.plan_round(round_plan(run_id), {}, None)
    store.start_round(rid)
    assert store.next_attempt(run_id, 0, 0) == 2
    assert store.abandon_open_rounds(run_id, "controller died") == 1
    assert store.rounds(run_id)[0].status == "failed"
    store.plan_round(round_plan(run_id, attempt=2), {}, None)
    assert [r.attempt for r in store.rounds(run_id)] == [1, 2]


def test_duplicate_attempt_is_rejected_atomically(store):
    from sqlalchemy.exc import IntegrityError

    run_id = _run(store)
    store.plan_round(round_plan(run_id), {}, None)
    with pytest.raises(IntegrityError):
        store.plan_round(round_plan(run_id), {}, None)
    # the failed transaction left neither a second round nor its event behind
    assert len(store.rounds(run_id)) == 1
    assert sum(e.entity == "round" for e in store.events(run_id)) == 1


def test_cancel_pending_and_running(store):
    a, b = _run(store), _run(store)
    assert store.request_cancel(a) == "cancelled"
    store.set_run_status(b, "running")
    from store.lease import RunLease

    lease = RunLease(store, b, ttl_s=60)
    lease.acquire()  # a live controller: it is asked, and stops itself
    assert store.request_cancel(b) == "requested" and store.cancel_requested(b)
    lease.release()
    store.set_run_status(b, "cancelled")
    store.set_run_status(b, "running")  # resume clears the request
    assert not store.cancel_requested(b)


def test_not_found_and_unreachable(store, tmp_path):
    with pytest.raises(NotFound):
        store.get_run("nope")
    with pytest.raises(StoreUnreachable, match="cannot open run store"):
        RunStore("postgresql://user:secret@127.0.0.1:1/db")
    with pytest.raises(StoreUnreachable) as info:
        RunStore("postgresql+psycopg2://user:secret@127.0.0.1:1/db")
    assert "secret" not in str(info.value)
    with pytest.raises(StoreUnreachable, match="notadialect"):
        RunStore("notadialect://x")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreUnreachable):
        RunStore(f"sqlite:///{blocker}/sub/store.db")


def test_a_round_over_2_pow_31_tokens_commits_and_reads_back(store):
    """512 steps x 1024 sequences x 4096 tokens is 2^31 tokens: on PostgreSQL an INTEGER column
    refused that commit (`integer out of range`), so the run could never pass such a round."""
    import dataclasses

    run_id = _run(store)
    big = 2**31 + 4096
    plan = dataclasses.replace(round_plan(run_id), global_step_start=2**31 + 7, num_steps=512)
    rid = store.plan_round(plan, {"kind": "cosine"}, None)
    store.start_round(rid)
    store.finish_round(rid, dataclasses.replace(round_result(), tokens=big))
    row = store.finished_round(run_id, 0, 0)
    assert (row.tokens, row.step_start, row.step_end) == (big, 2**31 + 7, 2**31 + 7 + 512)
    sid = store.create_run("r", "", {}, "/w", [("s", 2**33, 2**32, 1)])
    assert (store.stages(sid)[0].step_start, store.stages(sid)[0].total_steps) == (2**33, 2**32)


def test_concurrent_writers_lose_nothing(store_url):
    """Several processes hammer one store (SQLite: WAL + busy timeout + retries; Postgres: MVCC)."""
    import multiprocessing as mp

    url = store_url
    RunStore(url)
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        ids = pool.map(_create_many, [(url, i) for i in range(4)])
    store = RunStore(url)
    assert len(store.list_runs(1000)) == 4 * 10
    for run_id in (i for batch in ids for i in batch):
        assert store.get_run(run_id).status == "finished"
        assert [r.status for r in store.rounds(run_id)] == ["finished"]
    # every round's mixing transition committed with it, exactly once
    assert sorted(t.run_id for t in store.transitions()) == sorted(i for batch in ids for i in batch)


def _create_many(args):
    url, _ = args
    store = RunStore(url)
    out = []
    for _ in range(10):
        run_id = store.create_run("c", "", {}, "/w", [("s", 0, 1, 1)])
        store.set_run_status(run_id, "running")
        rid = store.plan_round(round_plan(run_id), {"kind": "cosine"}, None)
        store.start_round(rid)
        store.finish_round(rid, round_result(), {"num_domains": 1, "domains": ["a"], "state": [0.0], "action": [1.0],
                                            "reward": 0.0, "next_state": [0.0], "done": True, "mixer": "static"})
        store.set_run_status(run_id, "finished")
        out.append(run_id)
    return out


@pytest.mark.postgres
def test_a_shared_store_is_migrated_by_db_upgrade_only(pg_server, tmp_path):
    import pgserver
    from store.db import current_revision, head_revision, make_engine
    from store.errors import StoreBehind
    from tests_helpers import cpt

    url = pgserver.fresh_database(pg_server, "behind")
    with pytest.raises(StoreBehind, match="cpt --store URL db upgrade"):
        RunStore(url)  # opening does not migrate a shared database
    assert current_revision(make_engine(url)) is None
    out = cpt(tmp_path, "--store", url, "runs", "list")
    assert out.returncode == 2 and "db upgrade" in out.stderr
    assert cpt(tmp_path, "--store", url, "db", "upgrade").returncode == 0
    assert current_revision(make_engine(url)) == head_revision()
    assert cpt(tmp_path, "--store", url, "runs", "list", "--json").stdout.strip() == "[]"
