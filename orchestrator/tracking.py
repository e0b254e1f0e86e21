"""MLflow: one parent run per CPT run, a nested run per finished round.

Uses MlflowClient (no fluent global state), so several controllers in one process are safe.
Metrics are keyed by global step, so stages line up on one axis in the MLflow UI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from store.secrets import MASK, is_secret_key, redact


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}.{i}."))
        elif is_secret_key(key):
            out[key] = MASK
        else:
            out[key] = redact(str(v))[:6000]
    return out


LINK_FILE = "mlflow.json"  # in the run's workdir: its MLflow pages, for `cpt submit`, `runs show`, `ui`


def read_link(workdir: str | Path) -> dict[str, Any]:
    """The run's MLflow pages as the controller recorded them ({} before tracking began or when off)."""
    try:
        link = json.loads((Path(workdir) / LINK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return link if isinstance(link, dict) else {}


def link_line(url: str) -> str:
    """How a run's MLflow page is shown to a user (with a hint when only `cpt ui` serves it)."""
    return f"MLflow: {url}" + ("  (`cpt ui` serves it)" if "127.0.0.1:5000" in url else "")


KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI: which page an experiment opens on


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_root: Path):
        import logging

        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        # cpt retries failed logging itself (orchestrator/live.py, and rounds at the next boundary):
        # the client's own retries would block for minutes on a server that is down
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # mlflow sets its loggers up on import
            logging.getLogger(name).setLevel(logging.WARNING)

        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.experiment_id = self._experiment(experiment, artifact_root)

    def _experiment(self, name: str, artifact_root: Path) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                artifact_root.mkdir(parents=True, exist_ok=True)
                self.client.create_experiment(name, artifact_location=(artifact_root / name).as_uri())
            except MlflowException:  # another controller created it first
                pass
            exp = self.client.get_experiment_by_name(name)
        if KIND_TAG not in exp.tags:  # else MLflow 3's UI opens it as a GenAI (traces) experiment
            self.client.set_experiment_tag(exp.experiment_id, KIND_TAG, "custom_model_development")
        return exp.experiment_id

    def start_run(self, run_id: str, name: str, spec: dict[str, Any], existing: str | None) -> str:
        if existing:
            self.client.update_run(existing, status="RUNNING")
            return existing
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"cpt.run_id": run_id})
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten(spec).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])
        return run.info.run_id

    def log_round(self, parent: str, run_name: str, stage: str, stage_index: int, round_index: int,
                  weights: dict[str, float], result: dict[str, Any], step_start: int) -> str:
        """Log a finished round to the parent and to a new nested run; returns the nested run's id.

        Every per-step point carries its step's real time (the points logged live during the
        round are the same rows, which MLflow keeps once). `weights` has every domain of the run
        (0 for those the round did not train): the mixture is a step function with a point at
        the round's first and last step, the same kind (a metric) on the parent and the round."""
        import time

        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        n = len(result["train_losses"])
        end = step_start + n
        times = [int(t * 1000) for t in result.get("step_times") or []] or [now] * n
        ts_end = int(result["ended_at"] * 1000) if result.get("ended_at") else now
        steps = [Metric("train_loss", v, times[i], step_start + i + 1) for i, v in enumerate(result["train_losses"])]
        steps += [Metric("lr", v, times[i], step_start + i) for i, v in enumerate(result["lrs"])]
        steps += [Metric("grad_norm", v, times[i], step_start + i + 1)
                  for i, v in enumerate(result.get("grad_norms", []))]
        steps += [Metric(f"train_loss.{d}", v, times[i], step_start + i + 1)
                  for d, trace in result.get("domain_loss_trace", {}).items() for i, v in enumerate(trace)
                  if v is not None]
        mixture = [Metric(f"weight.{d}", w, t, s) for d, w in sorted(weights.items())
                   for t, s in ((times[0], step_start), (times[-1], end))]
        summary = [Metric("tokens_per_s", result["tokens_per_s"], ts_end, end)]
        summary += [Metric(k, float(result[k]), ts_end, end) for k in ("mfu", "fit_s", "round_s", "workers")
                    if result.get(k) is not None]
        summary += [Metric(f"eval_loss.{d}", v, ts_end, end) for d, v in result["eval_losses"].items()]
        summary += [Metric(f"train_loss_mean.{d}", v, ts_end, end)
                    for d, v in result.get("domain_train_losses", {}).items()]
        if result.get("eval_before"):
            start_ts = int(result["started_at"] * 1000) if result.get("started_at") else times[0]
            summary += [Metric(f"eval_loss.{d}", v, start_ts, step_start) for d, v in result["eval_before"].items()]
        self._batched(parent, steps + mixture + summary)
        start_ms = int(result["started_at"] * 1000) if result.get("started_at") else None
        child = self.client.create_run(
            self.experiment_id, run_name=f"{run_name}-s{stage_index}r{round_index}-{stage}", start_time=start_ms,
            tags={"mlflow.parentRunId": parent, "cpt.stage": stage, "cpt.round": str(round_index)})
        cid = child.info.run_id
        self.client.log_batch(cid, params=[Param("stage_index", str(stage_index)),
                                           Param("round_index", str(round_index))])
        self._batched(cid, steps + mixture + summary)
        self.client.set_terminated(cid, "FINISHED", end_time=ts_end)
        return cid

    def log_metrics(self, run_ids: list[str], values: dict[str, float], step: int) -> None:
        """Metrics at one step on each of the given runs (a round's downstream scores: the parent
        and the round's nested run)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for run_id in run_ids:
            self._batched(run_id, [Metric(k, v, now, step) for k, v in sorted(values.items())])

    def _batched(self, run_id: str, metrics: list) -> None:
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def log_artifact(self, mlflow_run_id: str, path: Path) -> None:
        self.client.log_artifact(mlflow_run_id, str(path))

    def end(self, mlflow_run_id: str, status: str) -> None:
        ends = {"finished": "FINISHED", "cancelled": "KILLED", "interrupted": "KILLED"}
        self.client.set_terminated(mlflow_run_id, ends.get(status, "FAILED"))
