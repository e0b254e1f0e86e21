from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pgserver
from orchestrator.group import SharedGroups  # noqa: E402
from synth import make_domains  # noqa: E402

REQUIRE_ALL = os.environ.get("CPT_REQUIRE_ALL") == "1"
# worker groups handed from one in-process test run to the next (one per resource shape; a group a
# test kills is replaced): each run skips a group start, as `cpt agent explore`'s trajectories do
GROUPS = SharedGroups()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CPT_REQUIRE_ALL=1 (CI, which has root, `ip`, PostgreSQL and Chromium) a test that would
    skip for a missing dependency or privilege fails instead: a skip must never pass CI silently."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CPT_REQUIRE_ALL=1, which forbids skips: {reason}"


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> dict:
    """Tokenizer + prepared 'en', 'de' and 'code' domains, built once per session."""
    return make_domains(tmp_path_factory.mktemp("synth"), langs=("en", "de", "code"))


def tiny_spec(synth: dict, **over) -> dict:
    """A 2-stage x 2-round spec on the synthetic domains that trains in seconds."""
    spec = {
        "name": "tiny",
        "seed": 0,
        "tokenizer": str(synth["tokenizer"]),
        "seq_len": 32,
        "batch_size": 4,
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "domains": {k: str(v) for k, v in synth["domains"].items()},
        "stages": [
            {"name": "s1", "domains": ["en"], "tokens": 32 * 4 * 8, "rounds": 2,
             "schedule": {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4, "warmup": 0.1}},
            {"name": "s2", "domains": ["de"], "tokens": 32 * 4 * 8, "rounds": 2,
             "schedule": {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4, "warmup": 0.1},
             "replay": {"fraction": 0.25}},
        ],
        "eval_batches": 2,
        "resources": {"cpus": 1},
    }
    spec.update(over)
    return spec


def long_spec(synth: dict, **over) -> dict:
    """tiny_spec with rounds of 30 steps: long enough to kill or signal something inside a round."""
    spec = tiny_spec(synth, **over)
    for st in spec["stages"]:
        st["tokens"] = 32 * 4 * 60
    return spec


@pytest.fixture(scope="session")
def long_reference(tmp_path_factory, synth, ray_local):
    """One uninterrupted in-process run of long_spec: the reference every fault test compares with.

    Returns (store, run_id, results): results are the finished rounds' RoundResults in order."""
    from orchestrator.controller import Controller

    home, store, run_id = recorded_run(tmp_path_factory.mktemp("long-reference"), long_spec(synth))
    assert Controller(store, home, run_id, tracking=False, groups=GROUPS).run() == "finished"
    return store, run_id, [r.result for r in store.rounds(run_id, status="finished")]


@pytest.fixture
def spec_file(tmp_path, synth):
    def write(**over) -> Path:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(tiny_spec(synth, **over)))
        return path

    return write


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray for the in-process end-to-end tests."""
    from orchestrator import cluster
    from orchestrator.home import Home

    cluster.connect(Home(tmp_path_factory.mktemp("ray-home"), "sqlite://"), num_cpus=2)
    import ray

    yield
    GROUPS.close()
    ray.shutdown()


@pytest.fixture
def ray_head():
    """A separate `ray start --head` with a job server, token auth and loopback-only ports."""
    from rayhead import start_head, stop_head

    head, proc = start_head()
    try:
        yield head
    finally:
        stop_head(head, proc)


def recorded_run(root: Path, spec: dict):
    """(home, store, run_id) of a pending run of `spec` recorded in a fresh CPT_HOME at root."""
    from orchestrator.home import Home
    from orchestrator.spec import parse_spec
    from orchestrator.submit import create_run
    from store.runs import RunStore

    home = Home.from_env(root)
    store = RunStore(home.store_url)
    text = yaml.safe_dump(spec)
    return home, store, create_run(store, home, parse_spec(text), text)


# ---- the store suite runs against SQLite and a real PostgreSQL server this session starts ----
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


# ---- object storage: a real S3-compatible server (moto's) on loopback ----
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback; the environment a cpt process needs to reach it."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
           "CPT_CACHE": str(tmp_path_factory.mktemp("shard-cache"))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
    fs.create_dir("corpora")
    try:
        yield {"env": env, "fs": fs, "cache": env["CPT_CACHE"]}
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        proc.terminate()
        proc.wait(10)
