"""Who a PID is now, from /proc (Linux): a PID alone names any process once its owner is gone (PIDs
are reused, after a reboot at once), so whoever records a process records its start time and boot
too, and checks them before trusting or signalling it (the run lease, `cpt cluster down`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stat:
    state: str
    """One letter: R, S, D, Z (zombie), X (dead), ..."""
    sid: int
    """Session id (the PID of the session's leader)."""
    start: int
    """Start time in clock ticks since boot: with the boot id, the process's identity."""


def stat(pid: int) -> Stat | None:
    """The process's state, session and start time; None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return Stat(fields[0], int(fields[3]), int(fields[19]))


def pid_namespace(pid: int) -> str | None:
    """The PID namespace's inode number (another container has another), or None."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid").strip("pid:[]")
    except OSError:
        return None


def boot_id() -> str:
    """This boot's random id ("" where /proc has none)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
