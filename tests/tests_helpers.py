"""Small helpers shared by tests."""

from __future__ import annotations

import yaml


def dump(synth: dict, **over) -> str:
    from conftest import tiny_spec

    return yaml.safe_dump(tiny_spec(synth, **over))
