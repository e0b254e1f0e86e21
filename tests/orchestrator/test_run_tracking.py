"""The run's MLflow side at its start: a tracking server that is down is one clear error, exit 2."""

from pathlib import Path

import pytest
import yaml

from conftest import tiny_spec
from orchestrator.home import Home
from orchestrator.run_tracking import RunTracking
from orchestrator.spec import parse_spec
from rayhead import free_port
from store.errors import TrackingError


def test_an_unreachable_tracking_server_is_a_tracking_error_naming_the_uri(tmp_path: Path, synth):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = parse_spec(yaml.safe_dump(tiny_spec(synth, tracking={"mlflow_uri": uri})))
    tracking = RunTracking(None, Home(tmp_path, "sqlite://"), spec, "run-1", tmp_path, print, list, None)
    with pytest.raises(TrackingError, match=rf"tracking.mlflow_uri {uri}: MLflow cannot be reached .*"
                                            r"cpt runs resume run-1") as caught:
        tracking.start()
    assert caught.value.exit_code == 2 and "Traceback" not in str(caught.value)
    assert not list(tmp_path.iterdir())  # nothing written: no link file, no spec copy
