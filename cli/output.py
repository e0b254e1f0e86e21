"""Console helpers: rich tables for people, --json for programs."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: str) -> str:
    """`text` with control characters (a terminal escape sequence in a file name, a bell, a
    carriage return that rewrites the line) shown as `\\xNN` instead of acted on by the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def console(stderr: bool = False):
    """A rich console that prints text as given: markup is off, because most of what cpt prints
    (paths, names, errors, documents) comes from users; `[bold]`-style markup is opted into per
    call with `markup=True`, with user parts passed through `rich.markup.escape`. Control
    characters are shown, never sent to the terminal (see `plain`)."""
    from rich.console import Console

    class Plain(Console):
        def print(self, *objects: Any, **kw: Any) -> None:
            super().print(*(plain(o) if isinstance(o, str) else o for o in objects), **kw)

    stream = sys.stderr if stderr else sys.stdout
    # Piped output keeps whole rows (rich would wrap tables at 80 columns).
    width = None if stream.isatty() else 200
    return Plain(stderr=stderr, highlight=False, soft_wrap=True, width=width, markup=False, emoji=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=None if title is None else Text(plain(title)), show_lines=False)
    for c in columns:
        t.add_column(Text(c), overflow="fold")
    for r in rows:  # Text: a cell is shown as written, never parsed as markup
        t.add_row(*(Text("" if v is None else (f"{v:.4f}" if isinstance(v, float) else plain(str(v)))) for v in r))
    console().print(t)


def loss_table(title: str, rows: list[dict[str, Any]]) -> list[list[Any]]:
    """rows: [{'point': str, 'losses': {domain: loss}}] -> printed table (domains as columns)."""
    domains = sorted({d for r in rows for d in r["losses"]})
    body = [[r["point"], *[r["losses"].get(d) for d in domains]] for r in rows]
    table(title, ["", *domains], body)
    return body


def fmt_seconds(s: float) -> str:
    """A duration as 42s, 7m05s or 3h12m."""
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
