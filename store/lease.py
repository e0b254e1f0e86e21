"""The run lease: at most one controller drives a run, and a controller that lost it writes nothing.

A controller takes the lease (owner id + heartbeat in the run row) by compare-and-set before it
changes anything, renews it from a heartbeat thread, and gives it back when it stops. Another
controller may take it over only when it is free, its heartbeat is older than the TTL, or its
owner is provably gone: a process of this very machine and PID namespace (same boot, same PID
namespace) whose PID is free or now another process (a SIGKILLed controller: no need to wait out
the TTL). An owner elsewhere, or in another container with the same host name, is judged by its
heartbeat alone. Heartbeats are stamped and judged with the database's clock, never the clients'
(their clocks may differ by more than a TTL), and against the longer of the owner's TTL and the
judge's, so a short `CPT_LEASE_TTL_S` on a resuming client cannot take over a live owner.

Fencing: every write of a controller's store (`RunStore.fenced`) first re-asserts, in the same
transaction, that this controller still holds the lease (`... WHERE lease_owner = :me`); a
controller paused past the TTL and taken over gets LeaseLost from its first write after waking
and stops, so the run's rows and MLflow hold only what the new owner wrote.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from store import procs
from store.errors import InputError
from store.models import Event, Run

DEFAULT_TTL_S = 60.0
MIN_TTL_S = 3.0


class RunBusy(InputError):
    """The run is driven by another live controller."""


def lease_ttl_s() -> float:
    """Seconds without a heartbeat after which a lease may be taken over (CPT_LEASE_TTL_S)."""
    raw = os.environ.get("CPT_LEASE_TTL_S", str(DEFAULT_TTL_S))
    try:
        ttl = float(raw)
    except ValueError:
        raise InputError(f"CPT_LEASE_TTL_S={raw!r}: not a number of seconds") from None
    if not MIN_TTL_S <= ttl <= 86400:
        raise InputError(f"CPT_LEASE_TTL_S={raw}: must be in [{MIN_TTL_S:g}, 86400] seconds (a shorter TTL would "
                         f"take over controllers that are alive)")
    return ttl


def _identity(pid: int) -> tuple[str, str, str] | None:
    """(boot id, PID namespace, start time in clock ticks) of a process of this machine, or None."""
    st, ns = procs.stat(pid), procs.pid_namespace(pid)
    if st is None or ns is None:
        return None
    return procs.boot_id()[:8], ns, str(st.start)


def new_owner(ttl_s: float = DEFAULT_TTL_S) -> str:
    """`host:pid:nonce@boot.pidns.start.ttl`: readable first, then what proves the process gone."""
    boot, ns, start = _identity(os.getpid()) or ("", "", "")
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}@{boot}.{ns}.{start}.{ttl_s:g}"


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    boot: str
    ns: str
    start: str
    ttl_s: float

    @classmethod
    def parse(cls, owner: str) -> Owner | None:
        """The parts of a `new_owner` id; None for another format (judged by its heartbeat only)."""
        try:
            head, _, tail = owner.partition("@")
            host, pid, _nonce = head.split(":")
            boot, ns, start, ttl = tail.split(".", 3)
            return cls(host, int(pid), boot, ns, start, float(ttl))
        except ValueError:
            return None


def owner_dead(owner: str) -> bool:
    """True only when the owner is provably gone: a process of this machine and PID namespace
    whose PID is free or names a process started at another time. Elsewhere we cannot know."""
    o = Owner.parse(owner)
    mine = _identity(os.getpid())
    if o is None or mine is None or o.host != socket.gethostname() or (o.boot, o.ns) != mine[:2]:
        return False
    now = _identity(o.pid)
    return now is None or now[2] != o.start


def lease_state(run: Run, now: datetime, ttl_s: float | None = None) -> str:
    """'free', 'stale' (heartbeat older than the longer of the owner's and our TTL, or owner provably
    dead) or 'live'. `now` is the database's clock, as the heartbeat is."""
    if run.lease_owner is None:
        return "free"
    o = Owner.parse(run.lease_owner)
    ttl = max(lease_ttl_s() if ttl_s is None else ttl_s, o.ttl_s if o else 0.0)
    if run.lease_heartbeat is None or now - run.lease_heartbeat > timedelta(seconds=ttl) or owner_dead(run.lease_owner):
        return "stale"
    return "live"


class RunLease:
    """One controller's hold on one run."""

    def __init__(self, store, run_id: str, owner: str | None = None, ttl_s: float | None = None):
        self.store, self.run_id = store, run_id
        self.ttl_s = lease_ttl_s() if ttl_s is None else ttl_s
        self.owner = owner or new_owner(self.ttl_s)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease or raise RunBusy naming the live owner (exit 2)."""
        def do() -> None:
            with self.store._tx() as s:
                run = self.store._get(s, Run, self.run_id, "run")
                now = self.store.db_now(s)
                seen, state = run.lease_owner, lease_state(run, now, self.ttl_s)
                if state == "live" and seen != self.owner:
                    ago = (now - run.lease_heartbeat).total_seconds()
                    raise RunBusy(f"run {self.run_id} is driven by controller {seen} (last heartbeat {ago:.0f}s "
                                  f"ago); stop it first, or wait {self.ttl_s:.0f}s after it died")
                same = Run.lease_owner.is_(None) if seen is None else Run.lease_owner == seen
                res = s.execute(update(Run).where(Run.id == self.run_id, same)
                                .values(lease_owner=self.owner, lease_heartbeat=now))
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
                                 .values(lease_heartbeat=self.store.db_now(s))).rowcount

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
        # CPT_LEASE_HEARTBEAT_S past the TTL stands for a controller whose heartbeats do not get
        # through (cut off from the store): the fault the fencing is for, reproducible in tests
        period = float(os.environ.get("CPT_LEASE_HEARTBEAT_S") or self.ttl_s / 4)

        def beat() -> None:
            while not self._stop.wait(period):
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
        return run is not None and lease_state(run, store.db_now(s)) == "live"
