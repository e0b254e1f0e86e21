"""Atomic round checkpoints: model + AdamW state as safetensors, metadata as JSON.

Written into a hidden temp folder, fsynced, then renamed: a checkpoint folder that exists is
complete. Nothing here unpickles anything.
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


def save_checkpoint(folder: str | Path, model, optimizer, meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        # Tied embeddings share storage; safetensors refuses shared tensors, so keep one copy.
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / MODEL_FILE))
        opt_tensors, opt_meta = _optimizer_tensors(model, optimizer)
        save_file(opt_tensors, str(tmp / OPTIM_FILE))
        (tmp / META_FILE).write_text(json.dumps({**meta, "optimizer": opt_meta}, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if folder.exists():  # a previous attempt of this round already published: replace it whole
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _optimizer_tensors(model, optimizer) -> tuple[dict, dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors, steps = {}, {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if not st:
                continue
            n = names[id(p)]
            tensors[f"{n}::exp_avg"] = st["exp_avg"].detach().contiguous().cpu()
            tensors[f"{n}::exp_avg_sq"] = st["exp_avg_sq"].detach().contiguous().cpu()
            steps[n] = float(st["step"])
    return tensors, {"steps": steps}


def load_checkpoint(folder: str | Path, model, expect_signature: str | None = None) -> dict:
    """Load weights from a checkpoint folder into `model`; returns its metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a complete checkpoint (no {META_FILE})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / META_FILE}: corrupt ({exc})") from None
    if expect_signature and meta.get("model_signature") != expect_signature:
        raise CheckpointError(f"{folder}: checkpoint is from a different model config "
                              f"({meta.get('model_signature')} != {expect_signature})")
    try:
        state = load_file(str(folder / MODEL_FILE))
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise CheckpointError(f"{folder / MODEL_FILE}: cannot read ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(f"{folder}: checkpoint does not fit the model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return meta


def load_optimizer_state(folder: str | Path, model, optimizer) -> None:
    """Restore AdamW moments and step counts saved by save_checkpoint, matched by parameter name."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        tensors = load_file(str(folder / OPTIM_FILE))
        steps = json.loads((folder / META_FILE).read_text()).get("optimizer", {}).get("steps", {})
    except (SafetensorError, FileNotFoundError, OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / OPTIM_FILE}: cannot read ({exc})") from None
    for n, p in model.named_parameters():
        if f"{n}::exp_avg" in tensors:
            optimizer.state[p] = {
                "step": torch.tensor(steps[n], dtype=torch.float32),
                "exp_avg": tensors[f"{n}::exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"{n}::exp_avg_sq"].to(p.device),
            }
