"""Engine creation and migrations. SQLite (WAL) by default; any SQLAlchemy URL works."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError

from store.errors import StoreBehind, StoreBusy, StoreError, StoreUnreachable
from store.secrets import redact


def _migrations_dir() -> Path:
    """The migrations folder: alembic/ beside the packages (a checkout, an editable install), or
    the `cpt_migrations` package a wheel installs it as."""
    beside = Path(__file__).resolve().parent.parent / "alembic"
    if (beside / "env.py").is_file():
        return beside
    import importlib.util

    spec = importlib.util.find_spec("cpt_migrations")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("cpt's migrations are not installed (no alembic/ and no cpt_migrations package)")
    return Path(list(spec.submodule_search_locations)[0])


ALEMBIC_DIR = _migrations_dir()


def store_timeout_s() -> float:
    """How long a store operation waits for a lock held by another process (CPT_STORE_TIMEOUT_S)."""
    import os

    try:
        value = float(os.environ.get("CPT_STORE_TIMEOUT_S", "30"))
    except ValueError:
        raise StoreUnreachable(f"CPT_STORE_TIMEOUT_S={os.environ['CPT_STORE_TIMEOUT_S']!r}: not a number") \
            from None
    if not 0 < value <= 86400:
        raise StoreUnreachable(f"CPT_STORE_TIMEOUT_S={value}: must be in (0, 86400] seconds")
    return value


def locked(url: str) -> StoreBusy:
    """The error for a store another process kept locked longer than CPT_STORE_TIMEOUT_S."""
    return StoreBusy(f"run store {redact(url)!r} is locked by another process (waited "
                     f"{store_timeout_s():g} s; CPT_STORE_TIMEOUT_S sets how long)")


def is_lock_wait(exc: Exception) -> bool:
    """Whether a driver error means another session held a lock past CPT_STORE_TIMEOUT_S: SQLite's
    "database is locked", PostgreSQL's lock or statement timeout."""
    text_ = str(exc).lower()
    return any(s in text_ for s in ("locked", "lock timeout", "statement timeout"))


def _server_timeouts(url: str) -> dict:
    """Connect, lock and statement timeouts for a server database, so that a server that does not
    answer, or a lock held by another session, is a clear error within CPT_STORE_TIMEOUT_S rather
    than a command that hangs forever."""
    seconds = store_timeout_s()
    ms = int(seconds * 1000)
    if url.startswith(("postgresql", "postgres")):
        return {"connect_timeout": max(1, round(seconds)),
                "options": f"-c lock_timeout={ms} -c statement_timeout={ms} -c idle_in_transaction_session_timeout="
                           f"{max(ms, 60_000)}"}
    return {}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (cpt runs list) proceed while a controller writes; busy_timeout makes
    # concurrent writers wait instead of failing with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={int(store_timeout_s() * 1000)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    """Open an engine and check the database answers; StoreUnreachable names the URL if not."""
    if url.split("?")[0] in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):
        raise StoreUnreachable(f"cannot open run store {url!r}: an in-memory SQLite database keeps nothing once "
                               f"the command ends; give a file (sqlite:////abs/path/store.db)")
    try:
        if url.startswith("sqlite:///"):
            from sqlalchemy.engine import make_url

            path = Path(make_url(url).database or "")
            if str(path) not in ("", ".", ":memory:"):
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": store_timeout_s()})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, connect_args=_server_timeouts(url))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except ImportError as exc:
        raise StoreUnreachable(f"cannot open run store {redact(url)!r}: database driver not installed "
                               f"({exc.name})") from None
    except OperationalError as exc:
        if is_lock_wait(exc):
            raise locked(url) from None
        raise StoreUnreachable(f"cannot open run store {redact(url)!r}: {exc.__class__.__name__}: "
                               f"{redact(str(exc).splitlines()[0])}") from None
    except DatabaseError as exc:  # "file is not a database": a corrupt or foreign file
        raise StoreBusy(f"run store {redact(url)!r} is corrupt or not a cpt store ({redact(str(exc.orig))})") \
            from None
    except (ArgumentError, NoSuchModuleError, OSError) as exc:
        raise StoreUnreachable(f"cannot open run store {redact(url)!r}: {exc.__class__.__name__}: "
                               f"{redact(str(exc).splitlines()[0])}") from None
    return engine


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (idempotent)."""
    from alembic import command

    make_engine(url).dispose()
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    if "alembic_version" not in inspect(engine).get_table_names():
        return None
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def ensure_schema(engine: Engine, url: str) -> None:
    """Check the schema is this code's; refuse one newer than this code. A SQLite store (one user's,
    under CPT_HOME) is migrated in place; a shared database is never migrated behind its users'
    backs: `cpt db upgrade` does that, and until then opening it is exit 2 saying so."""
    rev = current_revision(engine)
    head = head_revision()
    if rev == head:
        return
    from alembic.script import ScriptDirectory

    known = {s.revision for s in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}
    if rev is not None and rev not in known:
        raise StoreError(f"run store {redact(url)!r} is at revision {rev}, unknown to this cpt version")
    if engine.dialect.name != "sqlite":
        raise StoreBehind(f"run store {redact(url)!r} is at schema revision {rev or 'none (empty)'}, this cpt needs "
                          f"{head}: run `cpt --store URL db upgrade` to migrate it")
    upgrade(url)
