"""Round checkpoints, sharded: every rank writes only its part, through torch.distributed.checkpoint.

Format `cpt-dcp/1`: a folder with one raw-tensor file per rank (`__<rank>_0.distcp`), the JSON index
(`index.json`; workers/dcp_io.py: nothing is pickled) and `meta.json` (model signature, tokenizer
hash, the model's config, the world size that wrote it), written last: a folder with meta.json is
complete. The state is the model's and AdamW's tensors by parameter name, as
`torch.distributed.checkpoint.state_dict` gives them (DDP: replicated tensors, which DCP's planner
spreads over the ranks to write; FSDP: each rank its own shards), so any world size reads it back:
DCP reshards on load. Nothing is gathered to one rank on the way in or out.

A local target is written by every rank into `.NAME.tmp` and renamed by rank 0 once all are done;
a URI target (`checkpoints.uri`) is staged per node, each rank uploads its own file, rank 0 the index
and then meta.json. The store points at a checkpoint only after that (the round's commit), so a
crash in between leaves the previous round as the resume point.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from store.errors import CheckpointError, TrainingError
from workers.checkpoint import META_FILE, _fsync_dir, _unwrap, local_folder

FORMAT = "cpt-dcp/1"


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def state_of(model, optimizer) -> dict[str, dict[str, Any]]:
    """The model's and AdamW's tensors, flat: {"model": {fqn: t}, "optim": {"fqn/exp_avg": t, ...}}.
    Under FSDP these are this rank's shards; nothing is gathered. With no optimizer state yet, DCP's
    state-dict helper initialises it (zero moments), which is what a load fills in."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    module, opt = _unwrap(model, optimizer)
    msd, osd = get_state_dict(module, opt)
    flat = {f"{fqn}/{k}": v for fqn, st in osd.get("state", {}).items() for k, v in st.items() if hasattr(v, "shape")}
    return {"model": msd, "optim": flat}


def mine(state: dict[str, dict[str, Any]], rank: int, world: int) -> dict[str, dict[str, Any]]:
    """The part of a state this rank writes. A rank's own shards (DTensors, under FSDP) are its
    alone; a tensor every rank holds (DDP) goes to one rank, the ranks' bytes balanced (largest
    first, the same answer on every rank), so N ranks each write (and stage) about 1/N of it."""
    from torch.distributed.tensor import DTensor

    load, out = [0] * world, {part: {} for part in state}
    replicated = []
    for part, tensors in state.items():
        for k, v in tensors.items():
            if isinstance(v, DTensor) or world == 1:
                out[part][k] = v
            else:
                replicated.append((v.numel() * v.element_size(), part, k))
    for size, part, k in sorted(replicated, key=lambda x: (-x[0], x[1], x[2])):
        owner = min(range(world), key=lambda r: (load[r], r))
        load[owner] += size
        if owner == rank:
            out[part][k] = state[part][k]
    return out


def staged(state: dict[str, dict[str, Any]], buffers: dict[tuple[str, str], Any] | None = None
           ) -> dict[str, dict[str, Any]]:
    """A host-memory copy of a state: what an asynchronous save writes while training goes on.
    With `buffers` (kept by the caller across rounds) the copy goes into the same host memory each
    time: after the first round a stall is a plain copy, not an allocation and first touch of it."""
    import torch

    out: dict[str, dict[str, Any]] = {}
    synced = False
    for part, tensors in state.items():
        out[part] = {}
        for k, v in tensors.items():
            v = v.detach()
            held = buffers.get((part, k)) if buffers is not None else None
            # kept buffers of a GPU's plain tensors are page-locked: the copy runs at the link's rate
            # (a 1B model's state took 7.6 s through pageable memory on an H200), all copies in flight at once
            pin = buffers is not None and type(v) is torch.Tensor and v.is_cuda
            if held is None or held.shape != v.shape or held.dtype != v.dtype or type(held) is not type(v):
                held = torch.empty(v.shape, dtype=v.dtype, pin_memory=True) if pin else v.to("cpu", copy=True)
                if buffers is not None:
                    buffers[(part, k)] = held
                if pin:
                    held.copy_(v, non_blocking=True)
            else:
                held.copy_(v, non_blocking=pin)
            synced = synced or pin
            out[part][k] = held
    if synced:
        torch.cuda.synchronize()  # the copies are done before anyone reads the buffers
    return out


def write(folder: str, state: dict, meta: dict[str, Any], rank: int, group=None) -> float:
    """Every rank of `group` calls this with its own state; when it returns, the checkpoint at
    `folder` (a path or a URI) is complete on every rank, or TrainingError was raised on every
    rank. Returns the seconds it took."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from corpus import fs
    from workers.dcp_io import INDEX, Writer

    t0, distributed, remote = time.perf_counter(), _distributed(), fs.is_remote(folder)
    name = Path(str(folder).split("?")[0].rstrip("/")).name
    if remote:  # each node stages its own ranks' files; each rank uploads its own
        tmp = fs.cache_root() / "staging" / f"{name}-{abs(hash(str(folder))) % 10**10}"
    else:
        target = fs.local_path(folder)
        tmp = target.with_name(f".{target.name}.tmp-dcp")  # the same on every rank; resume removes leftovers
    error = None
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        dcp.save(state, storage_writer=Writer(tmp), process_group=group, no_dist=not distributed)
        if remote:
            fs.upload_files([tmp / f"__{rank}_0.distcp"], folder)
    except (Exception, dcp.CheckpointException) as exc:  # every rank learns every rank's outcome below
        error = f"rank {rank}: {_why(exc)}"
    try:
        _agree(error, folder, group)
    except TrainingError:  # nothing half-written stays behind (a remote attempt without meta.json is
        if remote or rank == 0:  # never read, and retention removes it)
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank == 0:
        try:
            world = dist.get_world_size(group) if distributed else 1
            (tmp / META_FILE).write_text(json.dumps({**meta, "format": FORMAT, "world_size": world}, indent=2,
                                                    sort_keys=True))
            if remote:
                fs.upload_files([tmp / INDEX, tmp / META_FILE], folder)  # the index, then meta.json: last
            else:
                _publish(tmp, target)
        except Exception as exc:
            error = f"rank 0: {type(exc).__name__}: {exc}"
            shutil.rmtree(tmp, ignore_errors=True)
    _agree(error if rank == 0 else None, folder, group)
    if remote:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - t0


def _why(exc: BaseException) -> str:
    """One line: DCP's CheckpointException (a BaseException) carries each failed rank's own exception."""
    failures = getattr(exc, "failures", None)
    if failures:
        exc = next(iter(failures.values()))
        exc = getattr(exc, "exc", exc)  # a wrapped remote traceback keeps the exception itself
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _agree(error: str | None, folder: str, group) -> None:
    """Raise the same TrainingError on every rank if any rank failed (a disk or a store that failed
    while the round saved: not the user's input, and not retried)."""
    import torch.distributed as dist

    errors = [error]
    if _distributed():
        errors = [None] * dist.get_world_size(group)
        dist.all_gather_object(errors, error, group=group)
    if any(errors):
        raise TrainingError(f"saving checkpoint {folder} failed: {'; '.join(e for e in errors if e)}")


def _publish(tmp: Path, target: Path) -> None:
    """Every file and the folder durable, then renamed into place (replacing an earlier publish of
    this very attempt), then the parent durable."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def read(folder: str | Path, model, optimizer, with_optimizer: bool, group=None) -> None:
    """Load a cpt-dcp/1 checkpoint into a live (possibly wrapped, possibly sharded) model and its
    AdamW, whatever world size wrote it; every rank calls it. The optimizer starts empty unless
    `with_optimizer`."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_state_dict

    module, opt = _unwrap(model, optimizer)
    state = state_of(model, optimizer)
    if not with_optimizer:
        state = {"model": state["model"]}
    _load(state, folder, process_group=group, no_dist=not _distributed())
    osd = get_optimizer_state_dict(module, opt)
    for fqn, st in osd.get("state", {}).items():
        for k in list(st):
            if f"{fqn}/{k}" in state.get("optim", {}):
                st[k] = state["optim"][f"{fqn}/{k}"]
    set_state_dict(module, opt, model_state_dict=state["model"], optim_state_dict=osd)
    if not with_optimizer:
        opt.state.clear()


def load_weights(folder: str | Path, model) -> None:
    """The model's weights of a sharded checkpoint into a plain model in this process (no process
    group): what export and `model.path: <a cpt checkpoint>` need."""
    state = {"model": dict(model.state_dict())}
    _load(state, folder, no_dist=True)
    model.load_state_dict(state["model"])


def _load(state: dict, folder: str | Path, **kw) -> None:
    """DCP's load of `state` in place from a cpt-dcp/1 folder (fetched once per node if remote); a
    rank's failure (a missing key, a short file), which DCP wraps in its own type, as CheckpointError."""
    import torch.distributed.checkpoint as dcp

    from workers.dcp_io import Reader

    try:
        dcp.load(state, storage_reader=Reader(local_folder(folder)), **kw)
    except CheckpointError:
        raise
    except (Exception, dcp.CheckpointException) as exc:
        raise CheckpointError(f"{folder}: cannot load ({_why(exc)})") from None
