"""No unpickling of untrusted files, local-only UIs by default, no secrets in params or messages."""

import inspect
import re
from pathlib import Path

from orchestrator.tracking import flatten, redact

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["orchestrator", "workers", "mixers", "store", "cli"]


def _sources():
    for pkg in PACKAGES:
        yield from (ROOT / pkg).rglob("*.py")


def test_no_pickle_and_no_unsafe_torch_load():
    for path in _sources():
        text = path.read_text()
        assert not re.search(r"^\s*import (c?pickle|dill|joblib)|from (c?pickle|dill|joblib) import", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "trust_remote_code=True" not in text, path


def test_uis_bind_to_localhost_by_default():
    from cli.main import ui
    from orchestrator import cluster

    assert inspect.signature(ui).parameters["host"].default.default == "127.0.0.1"
    assert 'dashboard_host="127.0.0.1"' in inspect.getsource(cluster.connect)


def test_secrets_are_masked_in_mlflow_params():
    params = flatten({"tracking": {"mlflow_uri": "https://alice:s3cret@mlflow.example/", "experiment": "e"},
                      "api_token": "abc", "nested": [{"password": "pw"}]})
    joined = " ".join(params.values())
    assert "s3cret" not in joined and "abc" not in joined and "pw" not in joined.split()
    assert params["tracking.mlflow_uri"] == "https://alice:***@mlflow.example/"
    assert redact("postgresql://u:p@h/db and sqlite:///x.db") == "postgresql://u:***@h/db and sqlite:///x.db"
