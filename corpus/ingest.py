"""Ingest text, JSONL or Parquet into token shards with a document-level train/val split.

Input is streamed: plain text is split into documents at a separator (blank lines by default)
while it is read, JSONL (.jsonl, .jsonl.gz, .jsonl.zst) a line at a time, Parquet a record
batch at a time, so memory stays flat on a multi-GB file. Documents are tokenized in batches by
the tokenizer's own parallel `encode_batch` (all cores). Everything is written to a temp folder
beside the output and renamed into place at the end, so a failure (corrupt input, full disk)
leaves nothing half-written.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from corpus import fs
from corpus.shards import FORMAT, SHARD_TOKENS, ShardWriter, publish_folder, read_manifest, write_json_atomic
from corpus.sources import documents as read_documents
from corpus.sources import list_inputs, plain_bytes
from corpus.tokenizer import EOS, load_tokenizer, tokenizer_hash
from store.errors import DataError
from store.files import check_replaceable

SPLIT_RULE = "crc32(seed:text)"


def is_val(text: str, val_fraction: float, seed: int) -> bool:
    """The document-level split, a function of the document's text: the same whatever reads it
    (engine, worker count, block boundaries, file order), and a duplicated document lands in
    one split, never in both (no train/val leak)."""
    h = zlib.crc32(text.encode("utf-8", "surrogatepass"), zlib.crc32(f"{seed}:".encode())) % 1_000_000
    return h < val_fraction * 1_000_000


def add_documents(writers: dict[str, ShardWriter], docs: dict[str, int], texts: list[str], encodings: Any,
                  eos: int, val_fraction: float, seed: int) -> int:
    """Append tokenized documents (each followed by EOS) to their split's shards; returns tokens added."""
    tokens = 0
    for text, enc in zip(texts, encodings, strict=True):
        split = "val" if is_val(text, val_fraction, seed) else "train"
        ids = enc.ids
        ids.append(eos)
        writers[split].add(ids)
        docs[split] += 1
        tokens += len(ids)
    return tokens


def make_manifest(domain: str, sources: list[Any], tokenizer_path: str | Path, vocab_size: int, eos: int,
                  val_fraction: float, seed: int, docs: dict[str, int], shards: list[dict[str, Any]],
                  **extra: Any) -> dict[str, Any]:
    """A domain's manifest; DataError if a split is empty (a domain needs both)."""
    if docs["train"] == 0 or docs["val"] == 0:
        raise DataError(f"{domain}: needs at least one train and one val document "
                        f"(got {docs['train']} train, {docs['val']} val from {docs['train'] + docs['val']} documents)")
    return {
        "format": FORMAT, "domain": domain, "sources": [str(s) for s in sources],
        "tokenizer": str(tokenizer_path), "tokenizer_hash": tokenizer_hash(tokenizer_path),
        "vocab_size": vocab_size, "eos_id": eos, "val_fraction": val_fraction, "seed": seed,
        "split_rule": SPLIT_RULE, "documents": docs,
        "tokens": {s: sum(sh["tokens"] for sh in shards if sh["split"] == s) for s in ("train", "val")},
        "shards": shards, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra,
    }


def check_val_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")


def check_output(out: Path, overwrite: bool) -> None:
    """An existing local `out` is refused, or with `overwrite` checked to be a domain folder."""
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists (pass --overwrite to replace it)")
    if out.exists():
        check_replaceable(out, "manifest.json", "a domain folder")


def staging_folder(out: Path) -> Path:
    """The temp folder a local domain is built in, beside `out` (renamed into place when complete)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    return tmp


def existing_remote_domain(out: str, overwrite: bool) -> dict[str, Any] | None:
    """The manifest of the domain already at a remote `out` (None if none); refused without `overwrite`."""
    try:
        old = read_manifest(out)
    except DataError:
        return None
    if not overwrite:
        raise DataError(f"{out}: already holds a prepared domain (pass --overwrite to replace it)")
    return old


def prepare_domain(src: str | Path | list[str | Path], domain: str, out: str | Path, tokenizer_path: str | Path,
                   **options: Any) -> dict[str, Any]:
    """Tokenize documents into `out`/{train,val}-NNNNN.arrow + manifest.json. Returns the manifest.

    `out` may be a URI (s3://, gs://, ...): the domain is built in a local temp folder, then
    uploaded shards first and manifest last, so readers never see a half-written domain."""
    if not fs.is_remote(out):
        return _prepare_local(src, domain, fs.local_path(out), tokenizer_path, **options)
    existing_remote_domain(str(out), options.pop("overwrite", False))
    with tempfile.TemporaryDirectory(prefix="cpt-prepare-") as tmp:
        staged = Path(tmp) / domain.replace("/", "_")
        manifest = _prepare_local(src, domain, staged, tokenizer_path, **options)
        fs.upload_folder(staged, str(out))
    return manifest


def _prepare_local(src: str | Path | list[str | Path], domain: str, out: str | Path, tokenizer_path: str | Path,
                   val_fraction: float = 0.05, seed: int = 0, text_field: str = "text",
                   overwrite: bool = False, max_docs: int | None = None,
                   on_progress: Callable[[int, int, float | None], None] | None = None,
                   documents: Iterator[str] | None = None, doc_sep: str | None = None,
                   shard_tokens: int = SHARD_TOKENS, batch_chars: int = 1 << 20) -> dict[str, Any]:
    check_val_fraction(val_fraction)
    out = Path(out)
    check_output(out, overwrite)  # refused before tokenizing, not after
    tok = load_tokenizer(tokenizer_path)
    eos = tok.token_to_id(EOS)
    sources = src if isinstance(src, list) else [src]
    inputs = []
    if documents is None:
        inputs = [i for s in sources for i in list_inputs(s)]  # a missing source fails before anything is made
        documents = (d for i in inputs for d in read_documents(i, text_field, doc_sep))
    tmp = staging_folder(out)
    try:
        writers = {"train": ShardWriter(tmp, "train", shard_tokens), "val": ShardWriter(tmp, "val", shard_tokens)}
        docs = {"train": 0, "val": 0}
        n = tokens = chars = submitted = done_chars = 0
        batch: list[str] = []
        total = plain_bytes(inputs)

        def write(texts: list[str], encodings) -> None:
            nonlocal n, tokens, done_chars
            tokens += add_documents(writers, docs, texts, encodings, eos, val_fraction, seed)
            n += len(texts)
            done_chars += sum(map(len, texts))
            if on_progress:
                on_progress(n, tokens, min(done_chars / total, 1.0) if total else None)

        # encode_batch (Rust, all cores, GIL released) tokenizes batch k while this thread reads
        # and splits batch k+1 and writes batch k-1: a pipeline, in order
        pending = None
        with ThreadPoolExecutor(1) as pool:
            for doc in documents:
                batch.append(doc)
                chars += len(doc)
                submitted += 1
                done = max_docs is not None and submitted >= max_docs
                if chars >= batch_chars or done:
                    if pending is not None:
                        write(pending[0], pending[1].result())
                    pending, batch, chars = (batch, pool.submit(tok.encode_batch, batch)), [], 0
                if done:
                    break
            if pending is not None:
                write(pending[0], pending[1].result())
            if batch:
                write(batch, tok.encode_batch(batch))
        for w in writers.values():
            w.flush()
        manifest = make_manifest(domain, sources, tokenizer_path, tok.get_vocab_size(), eos, val_fraction, seed, docs,
                                 writers["train"].shards + writers["val"].shards)
        write_json_atomic(tmp / "manifest.json", manifest)
        publish_folder(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
