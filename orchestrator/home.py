"""Where a cpt installation keeps its state: CPT_HOME (default ./cpt-home) and the store URL."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path
    store_url: str
    ray_address: str | None = None

    @classmethod
    def from_env(cls, root: str | Path | None = None, store_url: str | None = None,
                 ray_address: str | None = None) -> Home:
        root = Path(root or os.environ.get("CPT_HOME") or "cpt-home").expanduser().resolve()
        os.environ["CPT_HOME"] = str(root)  # specs may refer to ${CPT_HOME}
        url = store_url or os.environ.get("CPT_STORE_URL") or f"sqlite:///{root / 'store.db'}"
        return cls(root, url, ray_address or os.environ.get("RAY_ADDRESS") or None)

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def ray_temp(self) -> Path:
        # Ray's unix socket paths must stay under ~107 bytes; a deep CPT_HOME falls back to /tmp.
        inside = self.root / "ray"
        if len(str(inside)) <= 40:
            return inside
        return Path(tempfile.gettempdir()) / f"cpt-ray-{hashlib.sha1(str(self.root).encode()).hexdigest()[:8]}"
