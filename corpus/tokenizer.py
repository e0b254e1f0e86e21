"""Byte-level BPE tokenizer training (HF tokenizers) and the tokenizer identity hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from store.errors import DataError

EOS = "<|endoftext|>"
MAX_TOKENIZER_BYTES = 256 << 20


def tokenizer_hash(path: str | Path) -> str:
    """Identity of a tokenizer: hash of its vocabulary, merges and special tokens."""
    import stat

    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file; give a tokenizer.json")
        if info.st_size > MAX_TOKENIZER_BYTES:
            raise DataError(f"{path}: {info.st_size:,} bytes, more than a tokenizer file may have "
                            f"({MAX_TOKENIZER_BYTES:,})")
        data = json.loads(path.read_bytes())
        ident = {"model": data["model"], "added": data.get("added_tokens"), "pre": data.get("pre_tokenizer")}
    except FileNotFoundError:
        raise DataError(f"{path}: tokenizer file does not exist (train one with `cpt tokenizer train`)") \
            from None
    except PermissionError:
        raise DataError(f"{path}: cannot read the tokenizer file (permission denied)") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: not a tokenizers JSON file ({type(exc).__name__}: {str(exc)[:200]})") from None
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    path = Path(path)
    tokenizer_hash(path)  # clear error for missing / malformed files
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise DataError(f"{path}: cannot load tokenizer ({exc})") from None
    if tok.token_to_id(EOS) is None:
        raise DataError(f"{path}: tokenizer has no {EOS!r} token")
    return tok


MAX_VOCAB = 1 << 20


def train_tokenizer(texts: Iterable[str], out: str | Path, vocab_size: int = 8192,
                    min_frequency: int = 2) -> str:
    """Train a byte-level BPE (any text tokenizes: byte fallback) and save it atomically."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from store.files import check_output, output_file

    if not 300 <= vocab_size <= MAX_VOCAB:  # the trainer allocates by it: 1e11 aborted in Rust, no message
        raise DataError(f"vocab_size must be in [300, {MAX_VOCAB:,}] (256 bytes + merges; the largest "
                        f"tokenizers in use have ~256k), got {vocab_size:,}")
    check_output(out, "the tokenizer.json path")  # before the training, not after it
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    with output_file(out) as tmp:
        tok.save(str(tmp))
    return tokenizer_hash(out)
