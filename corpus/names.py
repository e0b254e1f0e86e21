"""How replay buffers are named: a buffer of domain D is mixed, cursored and reported as `replay/D`."""

from __future__ import annotations

REPLAY_PREFIX = "replay/"


def source_name(domain: str) -> str:
    """The domain a replay buffer holds (eval losses are measured on the source domain)."""
    return domain.removeprefix(REPLAY_PREFIX)


def buffer_name(domain: str) -> str:
    """The name a domain's replay buffer is mixed under."""
    return f"{REPLAY_PREFIX}{domain}"
