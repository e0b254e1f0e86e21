"""Writing an output file the user named (-o): atomically, and with one clear error if it cannot be."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from store.errors import InputError


def check_output(path: str | Path, what: str = "a file path") -> Path:
    """`path` as a Path, or InputError if it is a folder: callers that work long before they write
    (training a tokenizer, an agent) ask first, so the refusal does not come after the work."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give {what}")
    return path


@contextmanager
def output_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; on success it is renamed onto `path`, on any
    failure removed. A folder that cannot be created or written is InputError (exit 2) naming it."""
    path = check_output(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def check_replaceable(out: str | Path, marker: str, what: str) -> None:
    """Refuse to replace `out` with --overwrite unless cpt itself wrote it: a folder holding
    `marker` (an earlier export's cpt_export.json, a domain's manifest.json), or an empty one.
    CPT_HOME, any folder above it, the user's home and `/` are never replaced, whatever they hold."""
    out = Path(out).expanduser().resolve()
    guarded = [Path("/"), Path.home().resolve()]
    if os.environ.get("CPT_HOME"):
        home = Path(os.environ["CPT_HOME"]).expanduser().resolve()
        guarded += [home, *home.parents]
    if out in guarded:
        raise InputError(f"{out}: refusing to replace it (it is CPT_HOME, a folder above it, or a home folder); "
                         f"give a folder for {what}")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise InputError(f"{out}: --overwrite replaces only {what} cpt wrote (with its {marker}); "
                         f"this folder holds something else")
