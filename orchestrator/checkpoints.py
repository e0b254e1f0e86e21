"""Where a run's round checkpoints go, and which stay: the controller's side of checkpoint storage.

Writing is the ranks' job (workers/checkpoint.py: gather, write to a temp folder, rename). Here:
the folder a round's attempt writes to (the run's folder, or `checkpoints.uri` shared by every
node), retention after each commit (the last K rounds and the stages' last rounds stay; never the
one resume starts from), and the temp folders of saves that died half-way.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from orchestrator.spec import RunSpec
from store.errors import CptError
from store.runs import RunStore


def location(spec: RunSpec, workdir: Path, run_id: str, name: str) -> str:
    """The folder (or URI) of checkpoint `name` of this run."""
    from corpus import fs

    base = spec.checkpoints.uri
    if base is None:
        return str(workdir / "checkpoints" / name)
    return fs.join(fs.join(base, run_id), name)


def prune(store: RunStore, spec: RunSpec, workdir: Path, run_id: str, message: Callable[[str], None]) -> None:
    """Retention: delete round checkpoints beyond the last K and the stages' last rounds.

    Runs after the commit of a newer round, so the checkpoint resume starts from is never one of them."""
    from corpus import fs

    keep = spec.checkpoints
    if keep.keep_last is None:
        return
    done = store.rounds(run_id, status="finished")
    kept = {r.checkpoint_uri for r in done[-keep.keep_last:]}
    if keep.keep_stage_ends:
        kept |= {r.checkpoint_uri for r in done if r.round_index == spec.stages[r.stage_index].rounds - 1}
    for r in done:
        if r.checkpoint_uri in kept:
            continue
        if fs.is_remote(r.checkpoint_uri):
            if r.checkpoint_uri.startswith(location(spec, workdir, run_id, "")):  # only this run's own
                try:
                    fs.delete_folder(r.checkpoint_uri)
                except CptError as exc:  # retention must not fail a run
                    message(f"checkpoint retention: {exc}")
            continue
        path = Path(r.checkpoint_uri)
        if path.is_dir() and path.parent == workdir / "checkpoints":
            shutil.rmtree(path, ignore_errors=True)


def remove_partial(workdir: Path, message: Callable[[str], None]) -> None:
    """Temp folders of saves a dead worker never finished: never referenced, so just garbage."""
    folder = workdir / "checkpoints"
    for tmp in folder.glob(".*.tmp-*") if folder.exists() else []:
        shutil.rmtree(tmp, ignore_errors=True)
        message(f"removed partial checkpoint {tmp.name}")


def latest(store: RunStore, run_id: str) -> str | None:
    """The last finished round's checkpoint: where the next round starts."""
    done = store.rounds(run_id, status="finished")
    return done[-1].checkpoint_uri if done else None
