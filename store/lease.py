"""The run lease: at most one controller drives a run.

A controller takes the lease (owner id + heartbeat in the run row) by compare-and-set before it
changes anything, renews it from a heartbeat thread, and gives it back when it stops. Another
controller may take it over only when it is free, its heartbeat is older than the TTL, or its
owner is a process on this host that no longer exists (a SIGKILLed controller): then a resume
need not wait out the TTL. A controller that finds its lease taken stops without writing.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update

from store.errors import InputError
from store.models import Event, Run, utcnow

DEFAULT_TTL_S = 60.0


class RunBusy(InputError):
    """The run is driven by another live controller."""


def lease_ttl_s() -> float:
    """Seconds without a heartbeat after which a lease may be taken over (CPT_LEASE_TTL_S)."""
    return float(os.environ.get("CPT_LEASE_TTL_S", DEFAULT_TTL_S))


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_dead(owner: str) -> bool:
    """True only when the owner is a process on this host that is gone (elsewhere we cannot know)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, someone else's
        return False
    return False


def lease_state(run: Run, ttl_s: float | None = None, now: datetime | None = None) -> str:
    """'free', 'stale' (heartbeat too old or owner dead) or 'live'."""
    if run.lease_owner is None:
        return "free"
    ttl = lease_ttl_s() if ttl_s is None else ttl_s
    now = now or utcnow()
    if run.lease_heartbeat is None or now - run.lease_heartbeat > timedelta(seconds=ttl) or owner_dead(run.lease_owner):
        return "stale"
    return "live"


class RunLease:
    """One controller's hold on one run."""

    def __init__(self, store, run_id: str, owner: str | None = None, ttl_s: float | None = None):
        self.store, self.run_id = store, run_id
        self.owner = owner or new_owner()
        self.ttl_s = lease_ttl_s() if ttl_s is None else ttl_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease or raise RunBusy naming the live owner (exit 2)."""
        def do() -> None:
            with self.store._tx() as s:
                run = self.store._get(s, Run, self.run_id, "run")
                seen, state = run.lease_owner, lease_state(run, self.ttl_s)
                if state == "live" and seen != self.owner:
                    ago = (utcnow() - run.lease_heartbeat).total_seconds()
                    raise RunBusy(f"run {self.run_id} is driven by controller {seen} (last heartbeat {ago:.0f}s "
                                  f"ago); stop it first, or wait {self.ttl_s:.0f}s after it died")
                same = Run.lease_owner.is_(None) if seen is None else Run.lease_owner == seen
                res = s.execute(update(Run).where(Run.id == self.run_id, same)
                                .values(lease_owner=self.owner, lease_heartbeat=utcnow()))
                if res.rowcount != 1:  # another controller won the race between read and write
                    raise RunBusy(f"run {self.run_id} was just taken by another controller")
                if seen not in (None, self.owner):
                    s.add(Event(run_id=self.run_id, entity="run", entity_id=self.run_id, from_state=run.status,
                                to_state=run.status, message=f"lease taken over from {seen} ({state})"))

        self.store._retry(do)
        self._start_heartbeat()

    def renew(self) -> bool:
        """Refresh the heartbeat; False (and `lost` set) if someone else holds the lease now."""
        def do() -> int:
            with self.store._tx() as s:
                return s.execute(update(Run).where(Run.id == self.run_id, Run.lease_owner == self.owner)
                                 .values(lease_heartbeat=utcnow())).rowcount

        if self.store._retry(do) != 1:
            self.lost.set()
        return not self.lost.is_set()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

        def do() -> None:
            with self.store._tx() as s:
                s.execute(update(Run).where(Run.id == self.run_id, Run.lease_owner == self.owner)
                          .values(lease_owner=None, lease_heartbeat=None))

        self.store._retry(do)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.ttl_s / 4):
                try:
                    if not self.renew():
                        return
                except Exception:  # a store hiccup: try again next beat; the TTL leaves room
                    continue

        self._thread = threading.Thread(target=beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()


def holder_alive(store, run_id: str) -> bool:
    """Whether a live controller holds the run's lease."""
    with store._sessions() as s:
        run = s.scalars(select(Run).where(Run.id == run_id)).first()
        return run is not None and lease_state(run) == "live"
