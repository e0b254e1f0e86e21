"""One run's MLflow side, as the controller drives it: the parent run, a nested run per finished
round, live metrics while a round runs, the plots, and the run's end.

Tracking never stops training: a round MLflow cannot take stays without an MLflow id in the store
and is logged at a later round boundary or on resume (oldest first, so the parent's curves fill
in order); live metrics go through `LiveLogger`, which buffers through outages; the plots are
drawn on the logger's thread. The store stays the source of truth, so everything here can be
redone from it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from orchestrator.callbacks import RoundCallback
from orchestrator.home import Home
from orchestrator.spec import RunSpec
from store.errors import CptError, TrackingError, first_line
from store.records import RoundPlan, RoundResult
from store.runs import RunStore
from store.secrets import redact, redacted_yaml

ML_VIEW = "workflowType=machine_learning"
MAX_POINTS = 1000  # rounds a redrawn plot shows (every k-th past that, the last always)


class RunTracking(RoundCallback):
    """MLflow for one run, as one of the controller's round callbacks. With tracking off
    (`enabled=False`) nothing reaches MLflow and `announce` names only the Ray dashboard."""

    def __init__(self, store: RunStore, home: Home, spec: RunSpec, run_id: str, workdir: Path,
                 message: Callable[[str], None], domains: Callable[[], Iterable[str]], mlflow_id: str | None,
                 enabled: bool = True):
        self.store, self.home, self.spec, self.run_id, self.workdir = store, home, spec, run_id, workdir
        self.message, self.domains, self.enabled = message, domains, enabled
        self.mlflow_id = mlflow_id  # the parent run (from the store on resume)
        self.tracker = None
        self.live = None  # LiveLogger: MLflow metrics while rounds run (orchestrator/live.py)
        self._queued: set[int] = set()  # rounds whose record waits on the logging thread
        self._drawn_at = 0  # the run's round count at the last redraw
        self.unlogged: list[int] = []  # finished rounds MLflow could not take yet (retried later)

    def _everyone(self, weights: dict[str, float]) -> dict[str, float]:
        """The mixture over every domain the run knows (0 for those not trained): comparable across rounds."""
        return {d: weights.get(d, 0.0) for d in self.domains()}

    def announce(self, dashboard: str | None) -> None:
        """Where to watch the run: the Ray dashboard (this run's job) and its MLflow page."""
        from orchestrator.tracking import link_line, read_link

        url = read_link(self.workdir).get("url")  # none with tracking off
        for line in (f"Ray dashboard: {dashboard}" if dashboard else None, link_line(url) if url else None):
            if line:
                self.message(line)

    def start(self) -> None:
        """The parent run (new, or the stored one on resume), the link file, and for a new run the
        resolved, redacted spec and the LR schedule plot."""
        if not self.enabled:
            return
        from orchestrator.live import LiveLogger
        from orchestrator.plots import plot_lr
        from orchestrator.tracking import LINK_FILE, Tracker

        t = self.spec.tracking
        uri = t.mlflow_uri or self.home.mlflow_uri
        fresh = self.mlflow_id is None
        try:
            self.tracker = Tracker(uri, t.experiment, self.home.root / "mlartifacts")
            self.mlflow_id = self.tracker.start_run(self.run_id, self.spec.name, self.spec.model_dump(mode="json"),
                                                    self.mlflow_id)
        except CptError:
            raise
        except Exception as exc:  # a server that is down, refuses, or is not MLflow: one line, not its traceback
            first = first_line(exc, 400) or type(exc).__name__
            raise TrackingError(f"tracking.mlflow_uri {redact(uri)}: MLflow cannot be reached ({redact(first)}); "
                                f"start the server or fix the URI, then `cpt runs resume {self.run_id}`") from None
        self.live = LiveLogger(self.tracker.client, self.mlflow_id)
        ui = t.mlflow_uri if (t.mlflow_uri or "").startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        exp = f"{ui.rstrip('/')}/#/experiments/{self.tracker.experiment_id}/runs"
        (self.workdir / LINK_FILE).write_text(json.dumps({  # what `cpt runs show` and `cpt ui` link to
            # MLflow 3's UI opens in its GenAI (traces) mode unless the link asks for model training
            "url": redact(f"{exp}/{self.mlflow_id}?{ML_VIEW}"), "experiment_url": redact(f"{exp}?{ML_VIEW}"),
            "experiment_id": self.tracker.experiment_id, "run_id": self.mlflow_id, "local": not t.mlflow_uri}))
        if fresh:
            self.store.update_run(self.run_id, mlflow_run_id=self.mlflow_id)
            spec_path = self.workdir / "spec.yaml"  # resolved and redacted: no secret goes to MLflow
            spec_path.write_text(redacted_yaml(self.spec.model_dump(mode="json")))
            self.tracker.log_artifact(self.mlflow_id, spec_path)
            self.tracker.log_artifact(self.mlflow_id, plot_lr(self.spec, self.workdir / "lr_schedule.png"))

    def progress(self, round_id: int, plan: RoundPlan, records: list[dict[str, Any]]) -> None:
        """Live records of a running round, handed to the background logger (never blocks)."""
        if self.live is None:
            return
        from orchestrator.live import record_metrics

        everyone = self._everyone(plan.weights)
        for p in records:
            self.live.log(record_metrics(p, plan.global_step_start, plan.stage_step_start, everyone))

    def log_round(self, round_id: int, plan: RoundPlan, result: RoundResult) -> None:
        """Log a finished round on the logging thread (the next round does not wait for MLflow; a
        long run's nested runs cost the round loop nothing); an MLflow outage never stops
        training: the round stays without an MLflow id and is logged at a later round boundary
        (or on resume)."""
        if self.tracker is None:
            return
        if self.live is None or self.live.closed:  # the run's end: at once
            self._log_round(round_id, plan, result)
            return
        if round_id in self._queued:
            return
        self._queued.add(round_id)

        def job() -> None:
            try:
                self._log_round(round_id, plan, result)
            finally:
                self._queued.discard(round_id)

        self.live.call(job)

    def _log_round(self, round_id: int, plan: RoundPlan, result: RoundResult) -> None:
        from dataclasses import asdict

        i, r = plan.stage_index, plan.round_index
        try:
            cid = self.tracker.log_round(self.mlflow_id, self.spec.name, self.spec.stages[i].name, i, r,
                                         self._everyone(plan.weights), asdict(result), plan.global_step_start)
        except Exception as exc:
            if round_id not in self.unlogged:
                self.unlogged.append(round_id)
            self.message(f"MLflow unavailable ({redact(type(exc).__name__)}): round {i}.{r} will be "
                         f"logged when it is back")
            return
        self.store.set_round_mlflow(round_id, cid)
        with contextlib.suppress(ValueError):  # the logging thread and a round boundary may both clear it
            self.unlogged.remove(round_id)

    def log_evals(self, stage: int, round_: int, step: int, values: dict[str, float]) -> None:
        """A round's downstream scores (`eval.<task>.<metric>`) at the round's last step, on the run
        and on the round's nested run, on the logging thread; MLflow being down loses only these."""
        if self.tracker is None or not values:
            return

        def job() -> None:
            row = self.store.finished_round(self.run_id, stage, round_)
            ids = [self.mlflow_id] + ([row.mlflow_run_id] if row is not None and row.mlflow_run_id else [])
            try:
                self.tracker.log_metrics(ids, values, step)
            except Exception as exc:
                self.message(f"MLflow unavailable ({redact(type(exc).__name__)}): scores of round {stage}.{round_} "
                             f"are in the store only (`cpt runs evals`)")

        if self.live is None or self.live.closed:
            job()
        else:
            self.live.call(job)

    def log_unlogged(self) -> None:
        """Retry rounds MLflow could not take earlier, oldest first; stop at the first failure."""
        if not self.unlogged:  # the usual case: nothing to read back
            return
        rows = {x.id: x for x in self.store.rounds(self.run_id, status="finished")}
        for round_id in list(self.unlogged):
            row = rows.get(round_id)
            if row is None or row.mlflow_run_id is not None:
                with contextlib.suppress(ValueError):
                    self.unlogged.remove(round_id)
                continue
            self.log_round(row.id, row.plan, row.result)
            if round_id in self.unlogged and (self.live is None or self.live.closed):  # still down
                return

    def round_finished(self, round_id: int, plan: RoundPlan, result: RoundResult) -> None:
        """After a round's commit: earlier unlogged rounds first, then this one, then the plots."""
        self.log_unlogged()
        self.log_round(round_id, plan, result)
        i = plan.stage_index
        self.draw_artifacts(sum(st.rounds for st in self.spec.stages[:i]) + plan.round_index + 1)

    def draw_artifacts(self, n: int | None = None) -> None:
        """mixture.png and the per-domain validation curves, redrawn on the logging thread (the
        round loop never waits on matplotlib or the artifact store): after every round for the
        first 100, then every 1% of the rounds so far (a redraw reads and draws every round: so
        spaced, its cost per round stays constant however long the run), and at the run's end.
        `n`: the run's rounds so far, the one just finished included (None: the run's end)."""
        if self.live is None:
            return
        if n is not None and n > 100 and n - self._drawn_at < n // 100:
            return
        self._drawn_at = n or 0
        store, run_id, tracker, mlflow_id, folder = self.store, self.run_id, self.tracker, self.mlflow_id, self.workdir

        def draw() -> None:
            # the history is read here, on the logging thread, and without the rounds' plans and
            # results: a round boundary of a long run neither waits for it nor parses every round
            from orchestrator.plots import _plt, plot_mixture
            from orchestrator.reports import _curve, plot_curves

            done = store.rounds(run_id, status="finished", light=True)
            if not done:
                return
            first = store.finished_round(run_id, done[0].stage_index, done[0].round_index)
            points = _curve(done, first.result.eval_before if first and first.result else None)
            # a figure of a few hundred pixels shows ~1,000 points at most: draw that many, the last kept
            stride = -(-len(done) // MAX_POINTS)
            rounds = [{"label": f"s{x.stage_index}r{x.round_index}", "weights": x.weights}
                      for x in done[::-1][::stride][::-1]]
            points = points[::-1][::stride][::-1]
            tracker.log_artifact(mlflow_id, plot_mixture(rounds, folder / "mixture.png"))
            domains = sorted({d for p in points for d in p["losses"]})
            if domains:
                fig = plot_curves({"validation": points}, domains, folder / "loss_curves.png")
                _plt().close(fig)
                tracker.log_artifact(mlflow_id, folder / "loss_curves.png")

        self.live.submit(draw)

    def abandon(self) -> None:
        """The run was taken over by another controller: send nothing more (it tracks the run now)."""
        if self.live is not None:
            self.live.discard()

    def run_ended(self, status: str) -> None:
        """The run's end: last plots, the live backlog flushed (bounded), unlogged rounds, the status."""
        if self.tracker is None or self.mlflow_id is None:
            return
        self.draw_artifacts()
        if self.live is not None and not self.live.close(timeout=30):
            self.message(f"MLflow: {self.live.backlog} live metric(s) could not be delivered "
                         f"({self.live.last_error}); the round records in the store are complete")
        self.log_unlogged()
        try:
            self.tracker.end(self.mlflow_id, status)
        except Exception as exc:  # tracking must not mask the run's own outcome
            self.message(f"MLflow: could not finish tracking ({exc})")
