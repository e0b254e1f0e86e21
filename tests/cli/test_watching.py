"""Watching a run: `cpt cluster up` (one persistent local Ray per CPT_HOME, token-protected
dashboard on 127.0.0.1) that `cpt submit` joins, and the two UIs a user opens, driven in a real
headless Chromium: the MLflow UI that `cpt ui` serves and the cluster's Ray dashboard.

One cluster and one finished run serve the whole module (a cluster start and a run cost a minute
here); the tests run in file order and the last one takes the cluster down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from browser import chromium, wait_for
from conftest import tiny_spec
from rayhead import free_port
from tests_helpers import children, cli_env, cpt

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, synth):
    """A `cpt cluster up` cluster and one tiny run submitted to it: (home, state, run, submit output)."""
    tmp = tmp_path_factory.mktemp("watching")
    home = tmp / "home"
    up = cpt(home, "cluster", "up", "--num-cpus", "2", "--json", timeout=180)
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    try:
        spec = tmp / "run.yaml"
        spec.write_text(yaml.safe_dump(tiny_spec(synth)))
        run = cpt(home, "submit", str(spec), timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        shown = json.loads(cpt(home, "runs", "list", "--json").stdout)
        yield home, state, shown[0]["id"], run.stdout
    finally:
        cpt(home, "cluster", "down")


@pytest.fixture(scope="module")
def mlflow_ui(cluster, tmp_path_factory):
    """`cpt ui` on the run's tracking store, stopped (with its server) afterwards: (base URL, the
    experiment URL it printed)."""
    home = cluster[0]
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "ui", "--port", str(port)], env=cli_env(home),
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=5)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the MLflow UI did not start"
            time.sleep(0.3)
    printed = [ln.split(": ", 1)[1] for ln in log.read_text().splitlines() if ln.startswith("latest run's experiment")]
    yield url, printed[0] if printed else None
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def test_cluster_is_token_protected_and_idempotent(cluster):
    home, state, _, _ = cluster
    token = (home / "secrets" / "ray-token").read_text().strip()
    assert oct((home / "secrets" / "ray-token").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(urllib.error.HTTPError):  # the dashboard wants the token
        urllib.request.urlopen(state["dashboard"] + "/api/jobs/", timeout=10)
    req = urllib.request.Request(state["dashboard"] + "/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    assert urllib.request.urlopen(req, timeout=10).status == 200
    assert json.loads(cpt(home, "cluster", "up", "--json").stdout)["pid"] == state["pid"]  # idempotent
    assert json.loads(cpt(home, "cluster", "status", "--json").stdout)["pid"] == state["pid"]


def test_the_clusters_workers_run_at_cpts_niceness(cluster):
    from orchestrator.cluster import WORKER_NICENESS

    _, state, _, _ = cluster
    pgrep = subprocess.run(["pgrep", "-f", f"raylet.*{state['temp']}"], capture_output=True, text=True).stdout
    workers = []
    for raylet in map(int, pgrep.split()):  # Ray's workers are the raylet's children, named ray::...
        for pid in children(raylet):
            with open(f"/proc/{pid}/cmdline", "rb") as c:
                if c.read().startswith(b"ray::"):
                    workers.append(pid)
    assert workers and {os.getpriority(os.PRIO_PROCESS, p) for p in workers} == {WORKER_NICENESS}


def test_submit_joins_the_cluster_and_says_where_to_watch(cluster):
    home, state, run_id, out = cluster
    sessions = [p for p in Path(state["temp"]).glob("session_2*") if p.is_dir()]
    assert len(sessions) == 1  # no second Ray was started in this CPT_HOME
    assert list(sessions[0].glob("logs/python-core-driver-*.log"))  # the controller's driver is in it
    assert f"Ray dashboard: {state['dashboard']}" in out
    shown = json.loads(cpt(home, "runs", "show", run_id, "--json").stdout)
    assert f"MLflow: {shown['mlflow_url']}" in out
    token = (home / "secrets" / "ray-token").read_text().strip()
    req = urllib.request.Request(state["dashboard"] + "/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    jobs = json.loads(urllib.request.urlopen(req, timeout=10).read())
    (job,) = [j for j in jobs if j["job_id"] == shown["ray_job_id"]]  # the store knows the run's Ray job
    assert job["metadata"]["job_name"] == run_id and job["metadata"]["cpt_run_id"] == run_id


@pytest.mark.browser
def test_mlflow_ui_shows_rounds_mixtures_and_plots(cluster, mlflow_ui, tmp_path):
    from selenium.webdriver.common.by import By

    home, _, run_id, _ = cluster
    shown = json.loads(cpt(home, "runs", "show", run_id, "--json").stdout)
    link = json.loads((Path(shown["workdir"]) / "mlflow.json").read_text())
    exp, parent = link["experiment_id"], link["run_id"]
    domains = ["code", "de", "en"]
    base, printed = mlflow_ui
    assert printed == f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning"  # what `cpt ui` prints
    with chromium(tmp_path / "profile") as b:
        # the link opens the runs table (not MLflow 3's GenAI view): the parent run and its rounds
        b.get(printed)
        wait_for(b, ["Runs", "tiny"], "mlflow-experiment")
        row = b.find_element(By.XPATH, f"//div[@role='row' and @row-id='{parent}']")
        row.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
        wait_for(b, ["tiny-s0r0-s1", "tiny-s0r1-s1", "tiny-s1r0-s2", "tiny-s1r1-s2"], "mlflow-runs-nested")

        b.get(shown["mlflow_url"].replace("http://127.0.0.1:5000", base))  # the link `cpt runs show` prints
        text = wait_for(b, [f"eval_loss.{d}" for d in domains] + [f"weight.{d}" for d in domains], "mlflow-parent")
        assert "train_loss" in text and "tokens_per_s" in text
        b.get(f"{base}/#/experiments/{exp}/runs/{parent}/model-metrics?workflowType=machine_learning")
        wait_for(b, ["eval_loss.de"], "mlflow-parent-charts")
        b.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric']").send_keys("weight")
        wait_for(b, [f"weight.{d}" for d in domains], "mlflow-parent-mixture-charts")  # a chart per domain
        b.get(f"{base}/#/experiments/{exp}/runs/{parent}/artifacts?workflowType=machine_learning")
        wait_for(b, ["mixture.png", "loss_curves.png", "lr_schedule.png", "spec.yaml"], "mlflow-artifacts")


@pytest.mark.browser
def test_ray_dashboard_lists_the_runs_job_and_actors(cluster, tmp_path):
    from selenium.webdriver.common.by import By

    home, state, run_id, _ = cluster
    token = (home / "secrets" / "ray-token").read_text().strip()
    with chromium(tmp_path / "profile") as b:
        b.get(state["dashboard"])
        wait_for(b, ["Authentication Token Required"], "ray-login")  # token auth reaches the browser too
        b.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(token)
        b.find_element(By.XPATH, "//button[translate(normalize-space(), 'submit', 'SUBMIT')='SUBMIT']").click()
        b.get(state["dashboard"] + "/#/jobs")
        wait_for(b, [run_id, "SUCCEEDED", "cli.main submit"], "ray-jobs")  # the job is named after the run
        b.get(state["dashboard"] + "/#/actors")
        wait_for(b, [f"cpt-{run_id}-", "RayTrainWorker"], "ray-actors")  # the run's actors carry its id


def test_cluster_down_stops_only_its_own(cluster):
    home, state, _, _ = cluster
    # a `tail -f` of a Ray log: its command line names the cluster's temp dir, but cpt did not start it
    bystander = subprocess.Popen(["bash", "-c", 'exec -a "tail -f $0/session_latest/logs" sleep 300', state["temp"]])
    try:
        down = cpt(home, "cluster", "down")
        assert down.returncode == 0 and "stopped" in down.stdout
        left = subprocess.run(["pgrep", "-f", state["temp"]], capture_output=True, text=True).stdout.split()
        assert left == [str(bystander.pid)]  # the cluster's processes are all gone, the bystander is not
    finally:
        bystander.kill()
        bystander.wait()
    assert cpt(home, "cluster", "status", "--json").stdout.strip() == "null"
