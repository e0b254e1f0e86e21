"""No unpickling of untrusted files, local-only UIs by default, no secrets in params or messages."""

import inspect
import re
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from orchestrator.tracking import flatten
from store.secrets import redact, redact_tree

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["orchestrator", "workers", "mixers", "store", "corpus", "cli"]


def _sources():
    for pkg in PACKAGES:
        yield from (ROOT / pkg).rglob("*.py")


def test_no_pickle_and_no_unsafe_torch_load():
    for path in _sources():
        text = path.read_text()
        assert not re.search(r"^\s*import (c?pickle|dill|joblib)|from (c?pickle|dill|joblib) import", text, re.M), path
        # weights are safetensors only: no torch.load at all (even weights_only=True parses a pickle)
        assert "torch.load(" not in text and "load_state_dict_from_url" not in text, path
        assert "trust_remote_code=True" not in text, path


def test_the_mlflow_ui_binds_to_localhost_by_default():
    """`cpt ui`'s default; the Ray dashboard's address is checked on a live cluster (test_ray_auth.py)."""
    from cli.main import ui

    assert inspect.signature(ui).parameters["host"].default.default == "127.0.0.1"


def test_secrets_are_masked_in_mlflow_params():
    params = flatten({"tracking": {"mlflow_uri": "https://alice:s3cret@mlflow.example/", "experiment": "e"},
                      "api_token": "abc", "nested": [{"password": "pw"}]})
    joined = " ".join(params.values())
    assert "s3cret" not in joined and "abc" not in joined and "pw" not in joined.split()
    assert params["tracking.mlflow_uri"] == "https://alice:***@mlflow.example/"
    assert redact("postgresql://u:p@h/db and sqlite:///x.db") == "postgresql://u:***@h/db and sqlite:///x.db"


def test_token_budgets_and_tokenizer_are_not_secrets():
    params = flatten({"tokenizer": "/data/tok.json", "stages": [{"tokens": 600000, "replay": {"buffer": {
        "tokens": 20000}}}], "auth_token": "t0ps3cret"})
    assert params["stages.0.tokens"] == "600000" and params["tokenizer"] == "/data/tok.json"
    assert params["stages.0.replay.buffer.tokens"] == "20000"
    assert params["auth_token"] == "***"


def test_what_a_run_sends_to_mlflow_carries_no_secret(synth, tmp_path):
    """The spec artifact and the params RunTracking.start sends to a real MLflow store: redacted."""
    import yaml
    from mlflow.tracking import MlflowClient

    from conftest import recorded_run, tiny_spec
    from orchestrator.run_tracking import RunTracking

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = tiny_spec(synth, tracking={"mlflow_uri": mlflow_uri})
    raw["domains"]["remote"] = "s3://bucket/en?secret_key=hunter2&region=eu"
    home, store, run_id = recorded_run(tmp_path / "home", raw)
    spec = yaml.safe_load(store.get_run(run_id).spec_yaml)
    assert "hunter2" in spec["domains"]["remote"]  # the user's own spec keeps what they wrote
    from orchestrator.spec import parse_spec

    workdir = tmp_path / "run"
    workdir.mkdir()
    tracking = RunTracking(store, home, parse_spec(yaml.safe_dump(raw)), run_id, workdir, print, list, None)
    tracking.start()
    client = MlflowClient(mlflow_uri)
    params = client.get_run(tracking.mlflow_id).data.params
    assert params["domains.remote"] == "s3://bucket/en?secret_key=***&region=eu" and params["seed"] == "0"
    artifact = client.download_artifacts(tracking.mlflow_id, "spec.yaml", str(tmp_path))
    text = Path(artifact).read_text()
    assert "hunter2" not in text and "secret_key=***" in text and "tokens: 1024" in text
    assert "hunter2" not in (workdir / "spec.yaml").read_text()
    tracking.run_ended("finished")


def test_secrets_in_query_strings_stored_errors_and_tracebacks_are_masked(tmp_path, capsys):
    import pytest

    from cli.main import _internal_error
    from orchestrator.home import Home
    from store.runs import RunStore
    from store.secrets import redact

    assert redact("s3://b/x?endpoint_override=h:9&secret_key=abc&token=t1&region=eu") == \
        "s3://b/x?endpoint_override=h:9&secret_key=***&token=***&region=eu"
    assert redact("https://h/p?tokens=5&tokenizer=x") == "https://h/p?tokens=5&tokenizer=x"  # not secrets
    store = RunStore(Home.from_env(tmp_path / "home").store_url)
    run_id = store.create_run("r", "name: r", {"stages": []}, str(tmp_path / "runs"), [("s", 0, 4, 1)])
    store.set_run_status(run_id, "running")
    store.set_run_status(run_id, "failed", error="cannot reach postgresql://bob:hunter2@db/x")
    assert "hunter2" not in store.get_run(run_id).error and "bob:***@" in store.get_run(run_id).error
    assert all("hunter2" not in (e.message or "") for e in store.events(run_id))
    try:
        raise RuntimeError("boom at https://alice:s3cret@mlflow.example/ and ?api_key=k123")
    except RuntimeError as exc:
        with pytest.raises(SystemExit) as stop:
            _internal_error(exc)
    err = capsys.readouterr().err
    assert stop.value.code == 1 and "Traceback" in err and "s3cret" not in err and "k123" not in err


_PW = st.text(alphabet=st.sampled_from(list("abcXYZ019/@?#:;&=%+!$-_.~[]")), min_size=6, max_size=24)


@settings(max_examples=300, deadline=None)
@given(pw=_PW, scheme=st.sampled_from(["postgresql+psycopg2", "mysql", "https", "redis", "s3"]),
       host=st.sampled_from(["db.example.com", "127.0.0.1:5432", "[::1]:80"]),
       tail=st.sampled_from(["", "/db", "/db?sslmode=require", "/a/b#frag"]), around=st.sampled_from(
           ["{}", "error: cannot open {}", "'{}'", "see {}.", "({})"]))
def test_a_url_password_of_any_characters_is_masked_whole(pw, scheme, host, tail, around):
    """m1: passwords holding `/`, `@`, `?` or `#` were printed in part (the pattern stopped at them)."""
    assume(len(pw.strip("/?#@:;&=.")) >= 4)
    out = redact(around.format(f"{scheme}://user:{pw}@{host}{tail}"))
    assert pw not in out and f"user:***@{host}" in out


@settings(max_examples=100, deadline=None)
@given(token=st.text(alphabet=st.sampled_from(list("abcdefXYZ0123456789_-")), min_size=12, max_size=40),
       key=st.sampled_from(["sig", "X-Amz-Security-Token", "X-Amz-Signature", "session_token", "SAS_TOKEN",
                            "aws_session_token", "x-goog-signature", "token", "api_key"]))
def test_tokens_in_userinfo_signed_urls_and_connection_strings_are_masked(token, key):
    assert token not in redact(f"https://{token}@github.com/org/repo.git")  # a token as the user name
    assert token not in redact(f"https://acct.blob.core.windows.net/c/b?sv=2022-11-02&{key}={token}&se=1")
    assert token not in redact(f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={token};"
                               f"EndpointSuffix=core.windows.net")
    tree = redact_tree({"storage": {key.lower().replace("-", "_"): token, "account_key": token,
                                    "connection_string": token, "tokens": 1024, "tokenizer": "t.json"}})
    assert token not in str(tree) and tree["storage"]["tokens"] == 1024 and tree["storage"]["tokenizer"]
    # what must stay: an `@` in an object key, an e-mail address, non-secret parameters
    assert redact("s3://bucket/key@v2/x") == "s3://bucket/key@v2/x"
    assert redact("mail ops@example.com, http://h/p?tokens=5") == "mail ops@example.com, http://h/p?tokens=5"


def test_secret_files_are_0600_real_files_and_never_followed(tmp_path):
    import os
    import stat

    import pytest

    from orchestrator.home import Home
    from store.errors import InputError

    home = Home.from_env(tmp_path / "home")
    folder = home.root / "secrets"
    folder.mkdir(mode=0o755, parents=True)
    (folder / "ray-token").write_text("old")
    os.chmod(folder / "ray-token", 0o644)  # left readable by an older cpt, or by hand
    path = home.write_secret("ray-token", "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep")
    (folder / "store-url-x").symlink_to(elsewhere)
    with pytest.raises(InputError, match="symlink"):
        home.write_secret("store-url-x", "postgresql://u:pw@h/db")
    assert elsewhere.read_text() == "keep"
    other = Home.from_env(tmp_path / "other")
    other.root.mkdir(exist_ok=True)
    (other.root / "secrets").symlink_to(tmp_path)
    with pytest.raises(InputError, match="symlink"):
        other.write_secret("ray-token", "t")
    assert not (tmp_path / "ray-token").exists()
