"""Export a round checkpoint as a Hugging Face model folder.

A checkpoint of either format (sharded: the ranks' parts are read back into one model here;
full) becomes a folder holding the weights (`model.safetensors`, or above 5 GB shards with
`model.safetensors.index.json`), `config.json` and the tokenizer files, so that
`AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load it with
no cpt installed. The architecture comes from the config every cpt checkpoint records (any
transformers causal LM the run continued: Llama, Qwen2, GPT-NeoX, GPT-2, ...); the tokenizer is
the model's own when the run continued a local HF model that had one, else the run's tokenizer.
Written to a temp folder and renamed: the output either exists complete or not at all.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from store.errors import CheckpointError, InputError
from store.files import check_replaceable
from workers.checkpoint import load_checkpoint, local_folder, read_meta

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model")


def export_hf(checkpoint: str | Path, out: str | Path, tokenizer_json: str | Path, model_path: str | None = None,
              overwrite: bool = False, extra: dict | None = None, max_shard_size: str = "5GB") -> Path:
    # what can be refused is refused before torch and transformers load (seconds of imports)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"-o {out}: folder exists and is not empty (pass --overwrite to replace it)")
    if out.exists() and overwrite:
        check_replaceable(out, "cpt_export.json", "an export")
    # a checkpoint URI (checkpoints.uri) is read through a local cached copy
    checkpoint = local_folder(checkpoint)
    meta = read_meta(checkpoint)
    # the continued model's own tokenizer files when it had a complete set, else the run's tokenizer
    own = []
    if model_path and (Path(model_path) / "tokenizer_config.json").is_file():
        own = [Path(model_path) / f for f in TOKENIZER_FILES if (Path(model_path) / f).is_file()]
    model, tokenizer = load_hf(checkpoint, None if own else tokenizer_json, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _save_quietly(model, tmp, max_shard_size)
        for f in own:
            shutil.copy2(f, tmp / f.name)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "cpt_export.json").write_text(json.dumps({**(extra or {}), "checkpoint": str(checkpoint),
                                                         "tokenizer_hash": meta.get("tokenizer_hash")}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as exc:
        raise InputError(f"-o {out}: cannot write the export ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_hf(checkpoint: Path, tokenizer_json: str | Path | None, meta: dict | None = None):
    """A local round checkpoint (either format) as the transformers causal LM an export holds, in
    memory, and the run's tokenizer as an export declares it (None for None): what evaluations score
    without writing and reading the weights back (at 8B, 32 GB a round in fp32)."""
    meta = read_meta(checkpoint) if meta is None else meta
    config = dict(meta.get("model_config") or {})
    if not config.get("model_type"):
        raise CheckpointError(f"{checkpoint}: the checkpoint records no model config (written by an older cpt); "
                              f"re-run the round to export it")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    load_checkpoint(checkpoint, model)
    tokenizer = None if tokenizer_json is None else _run_tokenizer(tokenizer_json)
    if tokenizer is not None:
        _declare_special_tokens(model, tokenizer)
    return model.eval(), tokenizer


def _run_tokenizer(tokenizer_json: str | Path):
    """The run's tokenizer as a transformers tokenizer that names its special token: training joins
    documents with EOS (and nothing else), so EOS is also what begins and pads a sequence for tools
    that ask (lm-evaluation-harness decodes with it; a missing one fails there)."""
    from transformers import PreTrainedTokenizerFast

    from corpus.tokenizer import EOS

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), eos_token=EOS, bos_token=EOS, pad_token=EOS)


def _declare_special_tokens(model, tokenizer) -> None:
    """The token ids in config.json and generation_config.json, as the tokenizer declares them."""
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = cfg.bos_token_id = cfg.pad_token_id = eos


def _save_quietly(model, folder: Path, max_shard_size: str) -> None:
    """save_pretrained without transformers' "Writing model shards" bar (the CLI says one line);
    weights above `max_shard_size` go into several safetensors files with an index, as the Hub does."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
