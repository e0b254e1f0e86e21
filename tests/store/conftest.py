"""The store suite runs against SQLite and against a real PostgreSQL server this session starts."""

import uuid

import pytest

import pgserver


@pytest.fixture(scope="session")
def pg_server():
    url, data = pgserver.start()
    try:
        yield url
    finally:
        pgserver.stop(data)


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def empty_store_url(request, tmp_path) -> str:
    """A URL of an empty database, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    return pgserver.fresh_database(request.getfixturevalue("pg_server"), f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store_url(empty_store_url) -> str:
    """A migrated store on each backend (a shared database is migrated by `cpt db upgrade`, as here)."""
    from store.db import upgrade

    upgrade(empty_store_url)
    return empty_store_url
