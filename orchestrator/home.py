"""Where a cpt installation keeps its state: CPT_HOME (default ./cpt-home) and the store URL."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


def sqlite_url(path: str | Path) -> str:
    """A SQLite URL for a filesystem path, percent-encoded: a CPT_HOME with `?`, `#` or `%` is a
    path, never a query string or an escape (SQLAlchemy and MLflow unquote the database part)."""
    return "sqlite:///" + quote(str(path))


def _default_store_url(root: Path) -> str:
    return sqlite_url(root / "store.db")


def _read_secret(path: str | None) -> str | None:
    return Path(path).read_text().strip() if path else None


@dataclass(frozen=True)
class Home:
    root: Path
    store_url: str
    ray_address: str | None = None

    @classmethod
    def from_env(cls, root: str | Path | None = None, store_url: str | None = None,
                 ray_address: str | None = None) -> Home:
        root = Path(root or os.environ.get("CPT_HOME") or "cpt-home").expanduser().resolve()
        if root.exists() and not root.is_dir():
            from store.errors import InputError

            raise InputError(f"CPT_HOME {root}: is a file; give a folder (created if missing)")
        os.environ["CPT_HOME"] = str(root)  # specs may refer to ${CPT_HOME}
        url = store_url or os.environ.get("CPT_STORE_URL") or _read_secret(os.environ.get("CPT_STORE_URL_FILE"))
        address = ray_address or os.environ.get("RAY_ADDRESS") or None
        if address is None:  # `cpt cluster up` of this CPT_HOME: join it instead of starting a Ray
            from orchestrator.local_cluster import join_env

            joined = join_env(root)
            if joined:
                os.environ.setdefault("RAY_AUTH_TOKEN", joined["RAY_AUTH_TOKEN"])
                address = joined["RAY_ADDRESS"]
        return cls(root, url or _default_store_url(root), address)

    @property
    def default_store_url(self) -> str:
        return _default_store_url(self.root)

    def write_secret(self, name: str, value: str) -> Path:
        """Write `value` to CPT_HOME/secrets/NAME readable by this user only; returns the path. An
        existing file gets mode 0600 too, and neither the folder nor the file may be a symlink (one
        planted there would send the secret wherever it points)."""
        from store.errors import InputError

        folder = self.root / "secrets"
        if folder.is_symlink():
            raise InputError(f"{folder}: is a symlink; cpt keeps secrets only in a real folder of CPT_HOME")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        path = folder / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise InputError(f"{path}: cannot write a secret there ({exc.strerror}; a symlink is refused)") from None
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        return path

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
        return sqlite_url(self.root / "mlflow.db")

    @property
    def ray_temp(self) -> Path:
        # Ray's unix socket paths must stay under ~107 bytes; a deep CPT_HOME falls back to /tmp.
        inside = self.root / "ray"
        if len(str(inside)) <= 40:
            return inside
        return Path(tempfile.gettempdir()) / f"cpt-ray-{hashlib.sha1(str(self.root).encode()).hexdigest()[:8]}"
