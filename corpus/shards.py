"""Token shard format: a domain is a folder of Arrow IPC files plus manifest.json.

Each shard holds one int32 column `tokens`: documents concatenated, each followed by EOS.
Shards are memory-mapped on read, so a domain costs page cache, not process memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from store.errors import DataError

FORMAT = "cpt-shards/1"
SHARD_TOKENS = 4_000_000


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Appends token arrays to numbered shards of one split inside a (temporary) folder.

    Every shard but the last holds exactly shard_tokens tokens (a document may continue in the
    next shard), so shard sizes, and the sequences per shard, do not depend on document lengths."""

    def __init__(self, folder: Path, split: str, shard_tokens: int = SHARD_TOKENS):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.buf: list[np.ndarray] = []
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, ids: list[int] | np.ndarray) -> None:
        arr = np.asarray(ids, dtype=np.int32)
        while len(arr):
            take = min(len(arr), self.shard_tokens - self.buffered)
            self.buf.append(arr[:take])
            self.buffered += take
            arr = arr[take:]
            if self.buffered >= self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        name = f"{self.split}-{len(self.shards):05d}.arrow"
        path = self.folder / name
        table = pa.table({"tokens": pa.array(np.concatenate(self.buf), type=pa.int32())})
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1 << 20)
        self.shards.append({"file": name, "split": self.split, "tokens": self.buffered,
                            "sha256": file_sha256(path)})
        self.buf, self.buffered = [], 0


def publish_folder(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename a finished temp folder into place; an existing one is replaced only with overwrite."""
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{out}: already exists (pass --overwrite to replace it)")
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise DataError(f"{folder}: shard folder does not exist (prepare it with `cpt data prepare`)")
    if not path.is_file():
        raise DataError(f"{path}: missing; {folder} is not a prepared domain")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} manifest")
    for key in ("tokenizer_hash", "vocab_size", "eos_id", "shards", "tokens"):
        if key not in manifest:
            raise DataError(f"{path}: field {key!r} is missing")
    return manifest


@dataclass
class DomainData:
    """A memory-mapped domain: flat token streams for the train and val splits."""

    name: str
    folder: Path
    manifest: dict[str, Any]
    train: list[np.ndarray]
    val: list[np.ndarray]

    @classmethod
    def open(cls, name: str, folder: str | Path, tokenizer_hash: str | None = None) -> DomainData:
        folder = Path(folder)
        manifest = read_manifest(folder)
        if tokenizer_hash is not None and manifest["tokenizer_hash"] != tokenizer_hash:
            raise DataError(
                f"{folder}: shards were tokenized with tokenizer {manifest['tokenizer_hash']}, "
                f"but the run uses {tokenizer_hash}; re-prepare the domain with the run's tokenizer")
        splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        for shard in manifest["shards"]:
            splits[shard["split"]].append(_map_shard(folder / shard["file"], shard["tokens"]))
        return cls(name, folder, manifest, splits["train"], splits["val"])

    def tokens(self, split: str = "train") -> int:
        return sum(len(a) for a in getattr(self, split))


def _map_shard(path: Path, expected: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: shard listed in manifest.json is missing")
    try:
        source = pa.memory_map(str(path), "r")
        table = pa.ipc.open_file(source).read_all()
        col = table.column("tokens")
        arr = col.chunk(0).to_numpy(zero_copy_only=True) if col.num_chunks == 1 else col.to_numpy()
    except (pa.ArrowInvalid, pa.ArrowIOError, KeyError, OSError) as exc:
        raise DataError(f"{path}: corrupt or truncated shard ({str(exc).splitlines()[0]})") from None
    if len(arr) != expected:
        raise DataError(f"{path}: holds {len(arr)} tokens, manifest.json says {expected}")
    return arr


def verify_domain(folder: str | Path) -> dict[str, Any]:
    """Full check including checksums (reads every byte)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        _map_shard(path, shard["tokens"])
        if file_sha256(path) != shard["sha256"]:
            raise DataError(f"{path}: checksum does not match manifest.json")
    return manifest
