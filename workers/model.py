"""The causal LM: a Hugging Face model of a registered family (workers/families.py) built from a
config, or loaded from a local checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from store.configs import ModelConfig
from store.errors import CheckpointError


def is_cpt_checkpoint(path: str | Path) -> bool:
    """A round checkpoint of cpt (either format): meta.json beside full weights or a sharded index."""
    path = Path(path)
    weights = (path / "model.safetensors").is_file() or (path / "index.json").is_file()
    return (path / "meta.json").is_file() and weights


def check_hf_checkpoint(path: str | Path, vocab_size: int | None = None, tokenizer_hash: str | None = None) -> None:
    """A local HF checkpoint folder (safetensors) or a cpt round checkpoint that fits the tokenizer."""
    path = Path(path)
    if is_cpt_checkpoint(path):
        meta = json.loads((path / "meta.json").read_text())
        if tokenizer_hash and meta.get("tokenizer_hash") != tokenizer_hash:
            raise CheckpointError(f"{path}: cpt checkpoint was trained with tokenizer {meta.get('tokenizer_hash')}, "
                                  f"the run uses {tokenizer_hash}")
        return
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
    if not list(path.glob("*.safetensors")):
        raise CheckpointError(f"{path}: no *.safetensors weights (pickled .bin weights are refused)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path / 'config.json'}: not valid JSON ({exc})") from None
    if vocab_size is not None and config.get("vocab_size") != vocab_size:
        raise CheckpointError(f"{path}: checkpoint vocab_size {config.get('vocab_size')} does not match the "
                              f"run's tokenizer ({vocab_size})")


def build_model(model: ModelConfig | dict[str, Any], vocab_size: int, seq_len: int, seed: int,
                device: Any = None):
    """A fresh model (seeded init, workers/init.py: the same weights FSDP's unit-by-unit build gives)
    or a local HF checkpoint loaded from safetensors only. A fresh model is initialised on `device`
    (default CPU): on a GPU a 1B model's init takes a fraction of a second instead of a CPU's
    seconds, and no host copy of it is made."""
    import torch
    from transformers import AutoModelForCausalLM

    from workers.init import materialize

    model = ModelConfig.model_validate(model)
    if model.path and is_cpt_checkpoint(model.path):
        # a round checkpoint of an earlier cpt run: same sizes, weights only (optimizer starts fresh)
        from workers.checkpoint import load_checkpoint

        m = build_model(model.model_copy(update={"path": None}), vocab_size, seq_len, seed)
        load_checkpoint(model.path, m, expect_signature=model_signature(m))
        return m
    shell, weights = build_empty(model, vocab_size, seq_len)
    if weights:
        return AutoModelForCausalLM.from_pretrained(weights, config=shell.config, use_safetensors=True,
                                                    dtype=torch.float32)
    return materialize(shell, seed, device or "cpu")


def build_empty(model: ModelConfig | dict[str, Any], vocab_size: int, seq_len: int):
    """The model with its parameters on the meta device, for FSDP to materialise unit by unit
    (workers/init.py); `model.path` (an HF folder, checked against the run's tokenizer) gives its
    structure and its weights. Returns (model, the HF folder its weights come from, or None)."""
    from transformers import AutoConfig

    from workers.families import family
    from workers.init import empty

    model = ModelConfig.model_validate(model)
    if model.path and not is_cpt_checkpoint(model.path):
        check_hf_checkpoint(model.path)
        config = AutoConfig.from_pretrained(model.path)
        if config.vocab_size != vocab_size:
            raise CheckpointError(f"{model.path}: vocab_size {config.vocab_size} does not match the "
                                  f"run's tokenizer ({vocab_size})")
        return empty(config), model.path
    return empty(family(model.family).config(model, vocab_size, seq_len)), None


def token_losses(model, ids):
    """Mean next-token loss of each sequence in a [B, L+1] batch -> [B] (training: full logits)."""
    return _position_losses(model(input_ids=ids[:, :-1]).logits.float(), ids[:, 1:]).mean(dim=1)


def _position_losses(logits, targets):
    """Cross-entropy of [B, L, V] logits against [B, L] targets -> [B, L]. Taken over rows of V, not
    [B, V, L]: the last dimension of contiguous rows is the fast kernel (benchmarks/loss_layout.py:
    1.2-2.0x a CPU training step)."""
    import torch.nn.functional as F

    rows, length, vocab = logits.shape
    return F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), reduction="none").view(rows, length)


LOGIT_BYTES = 64 * 1024**2
"""The most fp32 logits evaluation holds at once (per micro-batch), whatever the vocabulary."""
# families whose logits are not a plain output layer over the last hidden states
_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def eval_losses(model, ids, logit_bytes: int = LOGIT_BYTES):
    """`token_losses` without ever holding a [B, L, V] logit tensor: the base model's last hidden
    states go through the output layer a slice of positions at a time, each slice's loss reduced
    at once (at vocab 128k and seq 4096 one sequence's fp32 logits are 2 GB; a slice here is 64 MB). A model whose
    logits are more than that layer (soft-capped, scaled) falls back to its own forward."""
    head = model.get_output_embeddings()
    base = model.base_model
    if head is None or base is model or any(getattr(model.config, k, None) for k in _SCALED_LOGITS):
        return token_losses(model, ids)
    return _sliced_loss(base(input_ids=ids[:, :-1]).last_hidden_state, head, ids, logit_bytes)


def eval_losses_whole(model, ids, logit_bytes: int = LOGIT_BYTES):
    """`eval_losses` for a model that may only run whole (FSDP: its per-block units run inside the
    root's forward, and the output layer's weight is gathered only there or in its own unit's): for
    one call the output layer's forward is the sliced loss against `ids`, so the model's forward
    returns per-sequence losses where it would return [B, L, V] logits."""
    head = model.get_output_embeddings()
    # an output layer that is an FSDP unit of its own (untied): the layer inside, so that its weight
    # is gathered once for the call, not once per slice
    head = getattr(head, "_fsdp_wrapped_module", head)
    if head is None or not hasattr(head, "out_features") or any(
            getattr(model.config, k, None) for k in _SCALED_LOGITS):
        return token_losses(model, ids)
    layer = type(head).forward.__get__(head)
    head.forward = lambda hidden: _sliced_loss(hidden, layer, ids, logit_bytes, head.out_features)
    try:
        return model(input_ids=ids[:, :-1]).logits.float()
    finally:
        del head.forward


def _sliced_loss(hidden, head, ids, logit_bytes: int, vocab: int | None = None):
    """Mean next-token loss per sequence from the last hidden states [B, L, H], the output layer
    applied a slice of positions at a time."""
    import torch

    rows, length = hidden.shape[:2]
    step = max(1, logit_bytes // (4 * (vocab or head.weight.shape[0]) * rows))
    total = torch.zeros(rows, dtype=torch.float64, device=hidden.device)
    for s in range(0, length, step):
        total += _position_losses(head(hidden[:, s:s + step]).float(), ids[:, 1 + s:1 + s + step]).sum(1)
    return (total / length).float()


def model_signature(model) -> str:
    """Identity of an architecture (parameter names and shapes) to refuse mismatched checkpoints."""
    import hashlib

    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16]
