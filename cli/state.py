"""Global CLI options resolved once (home folder, store URL, Ray address)."""

from __future__ import annotations

from pathlib import Path


class _State:
    def __init__(self) -> None:
        self._args: tuple = (None, None, None)
        self._home = None

    def configure(self, home: Path | None, store: str | None, address: str | None) -> None:
        self._args = (home, store, address)
        self._home = None

    def home(self):
        from orchestrator.home import Home

        if self._home is None:
            self._home = Home.from_env(*self._args)
        return self._home

    def store(self):
        from store.runs import RunStore

        return RunStore(self.home().store_url)


state = _State()
