"""The grammar of names users give (runs, stages, domains, experiments) and the paths built from them.

One pattern for every name: a letter or digit, then letters, digits, `.`, `_` or `-`, at most 64
characters. No `/`, no leading `.`, no whitespace, no markup: a name is safe as a path component,
a URL component, an MLflow key and a line of terminal output. Paths derived from a name are still
resolved and checked to stay under their root before anything is created, replaced or deleted
(symlinks included), so a bug elsewhere cannot turn a name into an escape.
"""

from __future__ import annotations

import re
from pathlib import Path

from store.errors import InputError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
_NAME = re.compile(NAME_PATTERN)


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(value: object, what: str) -> str:
    """`value` if it is a valid name, else InputError (exit 2) naming `what`."""
    if not is_name(value):
        raise InputError(f"{what} {value!r} is not a valid name ({NAME_RULE})")
    return value  # type: ignore[return-value]


def inside(root: str | Path, *parts: str) -> Path:
    """root/parts, resolved, refusing anything that is not strictly below the resolved root."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path == base or not path.is_relative_to(base):
        raise InputError(f"{'/'.join(parts)!r}: resolves to {path}, outside {base}")
    return path
