"""Where a run's round checkpoints go, and which stay: the controller's side of checkpoint storage.

Writing is the ranks' job (workers/checkpoint.py: each rank its shards, published by rename or
uploaded with the metadata last). Here: the folder a round's attempt writes to (the run's folder,
or `checkpoints.uri` shared by every node: a plain or shared folder, `file://`, or an object
store), retention after each commit (the last K rounds and the stages' last rounds stay; never
the one resume starts from; attempts that published but never committed go too), and the temp
folders of saves that died half-way.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

from orchestrator.spec import RunSpec
from store.errors import CptError
from store.runs import RunStore

ATTEMPT = re.compile(r"^s(\d+)-r(\d+)-a(\d+)$")


def run_folder(spec: RunSpec, workdir: Path, run_id: str) -> str:
    """The folder (or URI) holding every checkpoint of this run."""
    from corpus import fs

    base = spec.checkpoints.uri
    if base is None:
        return str(workdir / "checkpoints")
    if not fs.is_remote(base):  # a plain or shared folder, or file://: a local path
        return str(fs.local_path(base) / run_id)
    return fs.join(base, run_id)


def location(spec: RunSpec, workdir: Path, run_id: str, name: str) -> str:
    """The folder (or URI) of checkpoint `name` of this run."""
    from corpus import fs

    return fs.join(run_folder(spec, workdir, run_id), name)


def prune(store: RunStore, spec: RunSpec, workdir: Path, run_id: str, message: Callable[[str], None],
          done: list[tuple[int, int, int]] | None = None, protected: set[tuple[int, int, int]] = frozenset()) -> None:
    """Retention: delete every attempt folder of this run that is neither kept nor in flight.

    Kept: the last K finished rounds and the stages' last rounds. Deleted: older finished rounds,
    and attempts of rounds up to the last committed one that never committed (a crash after their
    upload, a retried attempt). A folder of a later round (still being written) and anything not
    named like an attempt is left alone. Runs after a commit, so resume's checkpoint is kept.
    `done`: (stage, round, attempt) of the finished rounds in order, when the caller holds them;
    `protected`: attempts something still reads (a downstream evaluation in flight)."""
    from corpus import fs

    keep = spec.checkpoints
    if keep.keep_last is None:
        return
    done = store.finished_keys(run_id) if done is None else done  # the controller passes its commits
    if not done:
        return
    kept = set(done[-keep.keep_last:]) | set(protected)
    if keep.keep_stage_ends:
        kept |= {k for k in done if k[1] == spec.stages[k[0]].rounds - 1}
    last = done[-1][:2]
    base = run_folder(spec, workdir, run_id)
    try:
        names = fs.list_folders(base)
    except CptError as exc:  # retention must not fail a run
        message(f"checkpoint retention: {exc}")
        return
    for name in names:
        m = ATTEMPT.match(name)
        if m is None:
            continue
        key = tuple(int(x) for x in m.groups())
        if key in kept or key[:2] > last:
            continue
        try:
            if fs.is_remote(base):
                fs.delete_folder(fs.join(base, name))
            else:
                shutil.rmtree(Path(base) / name, ignore_errors=True)
        except CptError as exc:
            message(f"checkpoint retention: {exc}")


def remove_partial(spec: RunSpec, workdir: Path, run_id: str, message: Callable[[str], None]) -> None:
    """Temp folders of saves a dead worker never finished: never referenced, so just garbage."""
    from corpus import fs

    base = run_folder(spec, workdir, run_id)
    folder = Path(base)
    if fs.is_remote(base) or not folder.exists():
        return
    for tmp in folder.glob(".*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
        message(f"removed partial checkpoint {tmp.name}")


def kept(checkpoint: str) -> bool:
    """Whether a committed round's checkpoint is still there (retention may have deleted it)."""
    from corpus import fs

    if not fs.is_remote(checkpoint):
        return (fs.local_path(checkpoint) / "meta.json").is_file()
    try:
        fs.read_bytes(fs.join(checkpoint, "meta.json"))
        return True
    except CptError:
        return False


def latest(store: RunStore, run_id: str) -> str | None:
    """The last finished round's checkpoint: where the next round starts."""
    done = store.rounds(run_id, status="finished")
    return done[-1].checkpoint_uri if done else None
