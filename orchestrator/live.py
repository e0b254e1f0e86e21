"""Live metrics: MLflow logging off the round loop, buffered through tracking outages.

The controller turns each progress record from rank 0 into MLflow metrics (with the step's real
timestamp) and hands them to `LiveLogger.log`, which only appends to a queue. A background
thread sends them in batches, in order. A batch that fails (server down, network gone) stays at
the head of the queue and is retried with backoff until it lands: nothing is dropped, and
nothing is duplicated, because MLflow keeps one row per (key, step, timestamp, value) and a
resent batch carries exactly the same rows. Training never waits on the tracking server.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

BATCH = 1000  # MLflow's log_batch limit on metrics


def record_metrics(record: dict[str, Any], global_start: int, stage_start: int,
                   weights: dict[str, float]) -> list[Any]:
    """MLflow metrics for one progress record of a round that starts at global step `global_start`
    (`stage_start` within its stage). Step numbering matches the round's final log: the loss of
    round step k at global step start + k + 1, its LR at start + k."""
    from mlflow.entities import Metric

    k = record["step"] - 1 - stage_start
    ts = int(record["t"] * 1000)
    step = global_start + k + 1
    out = [Metric("train_loss", record["loss"], ts, step), Metric("lr", record["lr"], ts, global_start + k),
           Metric("grad_norm", record["grad_norm"], ts, step), Metric("tokens_per_s", record["tokens_per_s"], ts, step)]
    out += [Metric(f"train_loss.{d}", v, ts, step) for d, v in record.get("domain_losses", {}).items()]
    # the mixture as a step function that compares across runs: every domain, at every logged step
    out += [Metric(f"weight.{d}", w, ts, step) for d, w in sorted(weights.items())]
    return out


class LiveLogger:
    def __init__(self, client, mlflow_run_id: str, retry_s: float = 1.0, max_retry_s: float = 30.0):
        self.client, self.run_id = client, mlflow_run_id
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.queue: deque = deque()
        self.jobs: deque = deque()  # plots and artifacts: drawn and uploaded off the round loop too
        self.ordered: deque = deque()  # round records: each runs, in order (never replaced)
        self.cond = threading.Condition()
        self.closed = False
        self.busy = False
        self.sent = 0
        self.last_error: str | None = None
        self.thread = threading.Thread(target=self._loop, name="cpt-live-metrics", daemon=True)
        self.thread.start()

    def log(self, metrics: list[Any]) -> None:
        """Enqueue; returns at once."""
        if metrics:
            with self.cond:
                self.queue.extend(metrics)
                self.cond.notify_all()

    def submit(self, job) -> None:
        """Run `job()` on the logging thread once the metrics queued before it are sent. Latest wins:
        a job not yet started is replaced (each redraws everything); a failure is kept in last_error."""
        with self.cond:
            self.jobs.clear()
            self.jobs.append(job)
            self.cond.notify_all()

    def call(self, job) -> None:
        """Run `job()` on the logging thread after everything queued before it, in order; unlike
        `submit`, every job runs (a round's record). Its failure is the job's own to handle."""
        with self.cond:
            self.ordered.append(job)
            self.cond.notify_all()

    @property
    def backlog(self) -> int:
        with self.cond:
            return len(self.queue)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s for everything queued to be delivered; True if it was."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.queue or self.ordered or self.jobs or self.busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def close(self, timeout: float = 10.0) -> bool:
        """Deliver what can be delivered within `timeout`, then stop the thread."""
        done = self.flush(timeout)
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join(1.0)
        return done

    def discard(self) -> None:
        """Drop everything not yet sent and stop: this controller lost its run to another one."""
        with self.cond:
            self.queue.clear()
            self.ordered.clear()
            self.jobs.clear()
            self.closed = True
            self.cond.notify_all()

    def _loop(self) -> None:
        delay = self.retry_s
        while True:
            with self.cond:
                while not self.queue and not self.ordered and not self.jobs and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                if not self.queue:
                    job, self.busy = (self.ordered or self.jobs).popleft(), True
                else:
                    job = None
                    batch = [self.queue[i] for i in range(min(BATCH, len(self.queue)))]
            if job is not None:
                try:
                    job()
                except Exception as exc:
                    from store.secrets import redact

                    self.last_error = redact(f"{type(exc).__name__}: {str(exc)[:300]}")
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()
                continue
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as exc:  # any outage: keep the batch, wait, retry the same rows
                from store.secrets import redact

                self.last_error = redact(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                with self.cond:
                    self.cond.wait(delay)
                delay = min(delay * 2, self.max_retry_s)
                continue
            delay = self.retry_s
            with self.cond:
                for _ in batch:
                    self.queue.popleft()
                self.sent += len(batch)
                self.cond.notify_all()
