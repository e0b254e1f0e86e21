"""Round checkpoints in the full format (`checkpoints.format: full`, and every checkpoint cpt wrote
before the sharded format, workers/sharded.py, which is the default): model + AdamW state gathered
to rank 0 and written by it as safetensors, metadata as JSON; plus what both formats share (the
metadata, where a checkpoint is read from).

Written into a hidden temp folder, files and folder fsynced, then renamed and the parent fsynced:
a checkpoint folder that exists is complete. The format does not depend on how the model was
trained (one process, DDP or FSDP): full tensors keyed by parameter name. Nothing here unpickles.

A checkpoint folder may also be a URI (`checkpoints.uri: s3://...`): it is written locally as
above, then uploaded with meta.json last, and read back through a node-local cached copy
(corpus.fs). The store only ever points at a checkpoint after its upload finished.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from store.errors import CheckpointError

MODEL_FILE, OPTIM_FILE, META_FILE = "model.safetensors", "optimizer.safetensors", "meta.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def local_folder(folder: str | Path) -> Path:
    """A local folder to read a checkpoint from: the folder itself, or a cached copy of a URI."""
    from corpus import fs

    return fs.local_copy(str(folder)) if fs.is_remote(folder) else Path(folder)


def save_state(folder: str | Path, model_state: dict, opt_tensors: dict, opt_steps: dict[str, float],
               meta: dict[str, Any], tied: bool) -> Path | str:
    """Write full (gathered) model and optimizer state atomically (to a folder or a URI)."""
    from corpus import fs

    if fs.is_remote(folder):
        import tempfile

        staging = fs.cache_root() / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging) as tmp:
            local = save_state(Path(tmp) / "ckpt", model_state, opt_tensors, opt_steps, meta, tied)
            fs.upload_folder(local, str(folder), last=META_FILE)
        return folder
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        # Tied embeddings share storage; safetensors refuses shared tensors, so keep one copy.
        if tied:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / MODEL_FILE))
        save_file({k: v.detach().contiguous().cpu() for k, v in opt_tensors.items()}, str(tmp / OPTIM_FILE))
        (tmp / META_FILE).write_text(json.dumps({**meta, "optimizer": {"steps": opt_steps}}, indent=2,
                                                sort_keys=True))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if folder.exists():  # a previous attempt of this round already published: replace it whole
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def full_state(model, optimizer) -> tuple[dict, dict, dict[str, float]]:
    """Full model and AdamW state of a wrapped model (plain, DDP or FSDP), keyed by parameter name.

    A collective under FSDP (every rank must call it); with cpu_offload only rank 0 holds the values."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    module, opt = _unwrap(model, optimizer)
    msd, osd = get_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tensors, steps = {}, {}
    for name, st in osd.get("state", {}).items():
        if "exp_avg" in st:
            tensors[f"{name}::exp_avg"] = st["exp_avg"]
            tensors[f"{name}::exp_avg_sq"] = st["exp_avg_sq"]
            steps[name] = float(st["step"])
    return msd, tensors, steps


def restore_state(model, optimizer, model_state: dict, opt_state: tuple[dict, dict] | None, tied: bool) -> None:
    """Load full model (and AdamW) state into a wrapped model on every rank: the inverse of full_state."""
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    module, opt = _unwrap(model, optimizer)
    state = dict(model_state)
    if tied and "lm_head.weight" not in state:  # saved once: the output layer is the input embedding
        source = _embedding_name(getattr(model, "module", model))
        if source in state:
            state["lm_head.weight"] = state[source]
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(module, state, options=options)
    opt.state.clear()
    if opt_state is None:
        return
    tensors, steps = opt_state
    template = get_optimizer_state_dict(module, opt, options=options)  # param groups named by FQN
    template["state"] = {n: {"step": torch.tensor(steps[n], dtype=torch.float32),
                             "exp_avg": tensors[f"{n}::exp_avg"], "exp_avg_sq": tensors[f"{n}::exp_avg_sq"]}
                         for n in steps if f"{n}::exp_avg" in tensors}
    set_optimizer_state_dict(module, opt, template, options=options)


def _embedding_name(raw) -> str | None:
    """Parameter name of a transformers model's input embedding (any family)."""
    emb = raw.get_input_embeddings().weight
    return next((n for n, p in raw.named_parameters(remove_duplicate=False) if p is emb), None)


def _unwrap(model, optimizer):
    """Lightning Fabric's wrappers -> the DDP/FSDP module (or plain module) and the torch optimizer."""
    return getattr(model, "_forward_module", model), getattr(optimizer, "optimizer", optimizer)


def read_meta(folder: str | Path, expect_signature: str | None = None) -> dict:
    folder = local_folder(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a complete checkpoint (no {META_FILE})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / META_FILE}: corrupt ({exc})") from None
    if expect_signature and meta.get("model_signature") != expect_signature:
        raise CheckpointError(f"{folder}: checkpoint is from a different model config "
                              f"({meta.get('model_signature')} != {expect_signature})")
    return meta


def read_checkpoint(folder: str | Path, expect_signature: str | None, with_optimizer: bool):
    """(model state, (optimizer tensors, steps) or None) from a checkpoint folder; CheckpointError if bad."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = local_folder(folder)
    meta = read_meta(folder, expect_signature)
    try:
        state = load_file(str(folder / MODEL_FILE))
        opt = None
        if with_optimizer:
            opt = load_file(str(folder / OPTIM_FILE)), meta.get("optimizer", {}).get("steps", {})
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise CheckpointError(f"{folder}: cannot read ({exc})") from None
    return state, opt


def is_sharded(meta: dict) -> bool:
    from workers.sharded import FORMAT

    return meta.get("format") == FORMAT


def load_checkpoint(folder: str | Path, model, expect_signature: str | None = None) -> dict:
    """Load weights from a checkpoint folder (either format) into a plain `model`; returns its metadata."""
    folder = local_folder(folder)
    meta = read_meta(folder, expect_signature)
    if is_sharded(meta):
        from workers.sharded import load_weights

        load_weights(folder, model)
        return meta
    state, _ = read_checkpoint(folder, None, with_optimizer=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(f"{folder}: checkpoint does not fit the model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return meta
