"""Ingest text, JSONL or Parquet into token shards with a document-level train/val split.

Input is streamed: plain text is split into documents at a separator (blank lines by default)
while it is read, JSONL (.jsonl, .jsonl.gz, .jsonl.zst) a line at a time, Parquet a record
batch at a time, so memory stays flat on a multi-GB file. Documents are tokenized in batches by
the tokenizer's own parallel `encode_batch` (all cores). Everything is written to a temp folder
beside the output and renamed into place at the end, so a failure (corrupt input, full disk)
leaves nothing half-written.
"""

from __future__ import annotations

import json
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
from corpus.tokenizer import EOS, load_tokenizer, tokenizer_hash
from store.errors import DataError
from store.files import check_replaceable

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text", ""}


def _files(src: Path) -> list[Path]:
    if not src.exists():
        raise DataError(f"{src}: source does not exist")
    if src.is_file():
        return [src]
    files = sorted(p for p in src.rglob("*") if p.is_file() and not any(x.startswith(".") for x in
                                                                        p.relative_to(src).parts))
    if not files:
        raise DataError(f"{src}: folder has no files")
    # a dataset folder (Hugging Face layout: data/*.parquet beside README.md, dataset_info.json) is
    # its data files only; the card and metadata are not documents
    for kind in (".parquet", JSONL_SUFFIXES):
        data = [p for p in files if p.name.lower().endswith(kind)]
        if data:
            return data
    return files


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson")
READ_CHARS = 1 << 20


def iter_documents(src: str | Path, text_field: str = "text", doc_sep: str | None = None) -> Iterator[str]:
    """Documents of a file or folder: JSONL a line, Parquet a row, plain text split at `doc_sep`
    (None: at blank lines, i.e. paragraphs; a file without separators is one document)."""
    for path in _files(Path(src)):
        name = path.name.lower()
        if name.endswith(JSONL_SUFFIXES):
            yield from _jsonl(path, text_field)
        elif name.endswith(".parquet"):
            yield from _parquet(path, text_field)
        else:
            yield from _text(path, doc_sep)


def _text(path: Path, sep: str | None) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            if sep is None:  # paragraphs: documents end at one or more blank lines
                doc: list[str] = []
                for line in f:
                    if line.strip():
                        doc.append(line)
                    elif doc:
                        yield "".join(doc)
                        doc = []
                if doc:
                    yield "".join(doc)
                return
            tail = ""
            for chunk in iter(lambda: f.read(READ_CHARS), ""):
                *docs, tail = (tail + chunk).split(sep)
                yield from (d for d in docs if d.strip())
            if tail.strip():
                yield tail
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start} of a read block)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _open_text(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    if name.endswith(".zst"):
        import io

        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True),
                                encoding="utf-8")
    return open(path, encoding="utf-8")


def _jsonl(path: Path, field: str) -> Iterator[str]:
    import gzip

    try:
        yield from _jsonl_lines(path, field)
    except (gzip.BadGzipFile, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.strerror:
            raise DataError(f"{path}: cannot read ({exc.strerror})") from None
        raise DataError(f"{path}: corrupt compressed file ({exc})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard"):
            raise DataError(f"{path}: corrupt compressed file ({exc})") from None
        raise


def _jsonl_lines(path: Path, field: str) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise DataError(f"{path}:{lineno}: no string field {field!r}")
            if obj[field].strip():
                yield obj[field]


def _parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    if field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {field!r} (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def is_val(doc_index: int, val_fraction: float, seed: int) -> bool:
    """Deterministic document-level split: the same document always lands in the same split."""
    h = zlib.crc32(f"{seed}:{doc_index}".encode()) % 1_000_000
    return h < val_fraction * 1_000_000


def prepare_domain(src: str | Path | list[str | Path], domain: str, out: str | Path, tokenizer_path: str | Path,
                   **options: Any) -> dict[str, Any]:
    """Tokenize documents into `out`/{train,val}-NNNNN.arrow + manifest.json. Returns the manifest.

    `out` may be a URI (s3://, gs://, ...): the domain is built in a local temp folder, then
    uploaded shards first and manifest last, so readers never see a half-written domain."""
    if not fs.is_remote(out):
        return _prepare_local(src, domain, fs.local_path(out), tokenizer_path, **options)
    overwrite = options.pop("overwrite", False)
    try:
        read_manifest(out)
        exists = True
    except DataError:
        exists = False
    if exists and not overwrite:
        raise DataError(f"{out}: already holds a prepared domain (pass --overwrite to replace it)")
    with tempfile.TemporaryDirectory(prefix="cpt-prepare-") as tmp:
        staged = Path(tmp) / domain.replace("/", "_")
        manifest = _prepare_local(src, domain, staged, tokenizer_path, **options)
        fs.upload_folder(staged, str(out))
    return manifest


def _prepare_local(src: str | Path | list[str | Path], domain: str, out: str | Path, tokenizer_path: str | Path,
                   val_fraction: float = 0.05, seed: int = 0, text_field: str = "text",
                   overwrite: bool = False, max_docs: int | None = None,
                   on_progress: Callable[[int, int], None] | None = None,
                   documents: Iterator[str] | None = None, doc_sep: str | None = None,
                   shard_tokens: int = SHARD_TOKENS, batch_chars: int = 1 << 20) -> dict[str, Any]:
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists (pass --overwrite to replace it)")
    if out.exists():  # refused before tokenizing, not after
        check_replaceable(out, "manifest.json", "a domain folder")
    tok = load_tokenizer(tokenizer_path)
    eos = tok.token_to_id(EOS)
    sources = src if isinstance(src, list) else [src]
    if documents is None:
        for s in sources:
            _files(Path(s))  # fail on a missing source before anything is created
        documents = (d for s in sources for d in iter_documents(s, text_field, doc_sep))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        writers = {"train": ShardWriter(tmp, "train", shard_tokens), "val": ShardWriter(tmp, "val", shard_tokens)}
        docs = {"train": 0, "val": 0}
        n = tokens = chars = submitted = 0
        batch: list[str] = []

        def write(encodings) -> None:
            nonlocal n, tokens
            for enc in encodings:
                split = "val" if is_val(n, val_fraction, seed) else "train"
                ids = enc.ids
                ids.append(eos)
                writers[split].add(ids)
                docs[split] += 1
                tokens += len(ids)
                n += 1
            if on_progress:
                on_progress(n, tokens)

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
                        write(pending.result())
                    pending, batch, chars = pool.submit(tok.encode_batch, batch), [], 0
                if done:
                    break
            if pending is not None:
                write(pending.result())
            if batch:
                write(tok.encode_batch(batch))
        if docs["train"] == 0 or docs["val"] == 0:
            raise DataError(f"{domain}: needs at least one train and one val document "
                            f"(got {docs['train']} train, {docs['val']} val from {n} documents)")
        for w in writers.values():
            w.flush()
        manifest = {
            "format": FORMAT, "domain": domain, "sources": [str(s) for s in sources],
            "tokenizer": str(tokenizer_path), "tokenizer_hash": tokenizer_hash(tokenizer_path),
            "vocab_size": tok.get_vocab_size(), "eos_id": eos, "val_fraction": val_fraction, "seed": seed,
            "documents": docs,
            "tokens": {s: sum(sh["tokens"] for sh in w.shards) for s, w in writers.items()},
            "shards": writers["train"].shards + writers["val"].shards,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        publish_folder(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
