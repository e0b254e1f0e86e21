"""Token shard format: a domain is a folder of Arrow IPC files plus manifest.json.

Each shard holds one int32 column `tokens`: documents concatenated, each followed by EOS.
Shards are memory-mapped on read, so a domain costs page cache, not process memory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from corpus import fs
from store.errors import DataError, InputError
from store.files import check_replaceable

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

    def __init__(self, folder: Path, split: str, shard_tokens: int = SHARD_TOKENS, prefix: str = ""):
        self.folder, self.split, self.shard_tokens, self.prefix = folder, split, shard_tokens, prefix
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
        name = f"{self.split}-{self.prefix}{len(self.shards):05d}.arrow"
        path = self.folder / name
        # one record batch per shard: a reader maps it as one zero-copy array (pa.table(dict) would
        # also import pandas, ~0.4 s)
        table = pa.Table.from_arrays([pa.array(np.concatenate(self.buf), type=pa.int32())], names=["tokens"])
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=self.shard_tokens)
        # `batches`: the record batches' sizes, so a reader sizes a remote shard without fetching it
        self.shards.append({"file": name, "split": self.split, "tokens": self.buffered,
                            "sha256": file_sha256(path), "batches": [self.buffered]})
        self.buf, self.buffered = [], 0


def publish_folder(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename a finished temp folder into place; an existing one is replaced only with overwrite."""
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{out}: already exists (pass --overwrite to replace it)")
        try:
            check_replaceable(out, "manifest.json", "a domain folder")
        except InputError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """A domain's manifest, from a local folder or any URI corpus.fs reads."""
    if fs.is_remote(folder):
        path = fs.join(folder, "manifest.json")
        raw = fs.read_bytes(path)
    else:
        folder = fs.local_path(folder)
        path = folder / "manifest.json"
        if folder.exists() and not folder.is_dir():
            raise DataError(f"{folder}: is a file, not a shard folder (a domain is the folder `cpt data prepare` "
                            f"writes)")
        if not folder.is_dir():
            raise DataError(f"{folder}: shard folder does not exist (prepare it with `cpt data prepare`)")
        if not path.is_file():
            raise DataError(f"{path}: missing; {folder} is not a prepared domain")
        if path.stat().st_size > fs.MAX_MANIFEST_BYTES:
            raise DataError(f"{path}: larger than the {fs.MAX_MANIFEST_BYTES:,} bytes a manifest may have")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise read_error(path, exc, f"{path}: cannot read ({exc.strerror})") from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} manifest")
    for key in ("tokenizer_hash", "vocab_size", "eos_id", "shards", "tokens"):
        if key not in manifest:
            raise DataError(f"{path}: field {key!r} is missing")
    _check_schema(manifest, path)
    return manifest


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_schema(m: dict[str, Any], path: Any) -> None:
    """Types, ranges and totals a manifest must have (cheap: no shard is read)."""
    if not _int(m["vocab_size"]) or not 0 < m["vocab_size"] <= 1 << 24:
        raise DataError(f"{path}: vocab_size must be an integer in (0, {1 << 24}], got {m['vocab_size']!r}")
    if m["eos_id"] is not None and (not _int(m["eos_id"]) or not 0 <= m["eos_id"] < m["vocab_size"]):
        raise DataError(f"{path}: eos_id {m['eos_id']!r} is not a token id below vocab_size {m['vocab_size']}")
    if not isinstance(m["shards"], list) or not isinstance(m["tokens"], dict):
        raise DataError(f"{path}: shards must be a list and tokens a mapping")
    totals = {"train": 0, "val": 0}
    for i, sh in enumerate(m["shards"]):
        if not isinstance(sh, dict) or sh.get("split") not in totals or not _int(sh.get("tokens")) \
                or sh["tokens"] < 0 or not isinstance(sh.get("file"), str) or not isinstance(sh.get("sha256"), str):
            raise DataError(f"{path}: shards[{i}] must have file, split (train|val), tokens >= 0 and sha256")
        totals[sh["split"]] += sh["tokens"]
        batches = sh.get("batches", [sh["tokens"]])
        if not isinstance(batches, list) or not all(_int(b) and b >= 0 for b in batches) \
                or sum(batches) != sh["tokens"]:
            raise DataError(f"{path}: shards[{i}].batches must be the sizes of its record batches, summing to its "
                            f"tokens ({sh['tokens']})")
    seen: dict[str, int] = {}
    for i, sh in enumerate(m["shards"]):  # one file, or one content, listed twice: data read twice, or val = train
        for key in (("file", os.path.normpath(sh["file"])), ("sha256", sh["sha256"])):
            if key in seen and (sh["tokens"] or key[0] == "file"):
                j = seen[key]
                raise DataError(f"{path}: shards[{i}] ({sh['split']}) and shards[{j}] ({m['shards'][j]['split']}) "
                                f"are the same {'file' if key[0] == 'file' else 'content'} ({key[1]}): a shard "
                                f"may appear once, in one split")
            seen.setdefault(key, i)
    for split, total in totals.items():
        if m["tokens"].get(split, 0) != total:
            raise DataError(f"{path}: tokens.{split} says {m['tokens'].get(split)!r}, its shards hold {total}")


class DomainData:
    """A domain's train and val splits as numbered token arrays (one per shard record batch).

    Local shards are memory-mapped when the domain is opened (a truncated or foreign file is an
    error then). A remote domain whose manifest lists each shard's record-batch sizes (every shard
    cpt writes) is sized from the manifest alone: a shard is fetched into the node's cache on its
    first read, so `cpt submit`, the controller and a rank download only what they read. A remote
    manifest without sizes (written by hand or by another tool) is fetched whole when opened."""

    def __init__(self, name: str, folder: Path | str, manifest: dict[str, Any], lazy: bool):
        self.name, self.folder, self.manifest = name, folder, manifest
        self._parts: dict[str, list[tuple[int, int]]] = {"train": [], "val": []}  # (shard, batch in shard)
        self._sizes: dict[str, list[int]] = {"train": [], "val": []}
        self._mapped: dict[int, tuple[Path, list[np.ndarray], list[int]]] = {}
        for i, shard in enumerate(manifest["shards"]):
            _shard_name(folder, shard)  # a path outside the folder is refused before anything is read
            # an empty record batch holds no sequence: the numbered arrays are the non-empty ones
            sizes = [n for n in shard["batches"] if n] if lazy else [len(a) for a in self._map(i)[1]]
            for j, n in enumerate(sizes):
                self._parts[shard["split"]].append((i, j))
                self._sizes[shard["split"]].append(n)

    @classmethod
    def open(cls, name: str, folder: str | Path, tokenizer_hash: str | None = None) -> DomainData:
        remote = fs.is_remote(folder)
        folder = str(folder) if remote else fs.local_path(folder)
        manifest = read_manifest(folder)
        if tokenizer_hash is not None and manifest["tokenizer_hash"] != tokenizer_hash:
            raise DataError(
                f"{folder}: shards were tokenized with tokenizer {manifest['tokenizer_hash']}, "
                f"but the run uses {tokenizer_hash}; re-prepare the domain with the run's tokenizer")
        lazy = remote and all("batches" in sh for sh in manifest["shards"])
        return cls(name, folder, manifest, lazy)

    def sizes(self, split: str = "train") -> list[int]:
        """Tokens of each numbered array of the split (no shard is read)."""
        return self._sizes[split]

    def tokens(self, split: str = "train") -> int:
        return sum(self._sizes[split])

    def array(self, split: str, k: int) -> np.ndarray:
        """The split's k-th array, a view of its (fetched, mapped) shard."""
        i, j = self._parts[split][k]
        return self._map(i)[1][j]

    def where(self, k: int) -> tuple[str, int]:
        """(local file, byte offset) of the k-th train array: where pread finds its tokens."""
        i, j = self._parts["train"][k]
        path, _, offsets = self._map(i)
        return str(path), offsets[j]

    @property
    def train(self) -> list[np.ndarray]:
        """Every train array (fetches every train shard of a remote domain)."""
        return [self.array("train", k) for k in range(len(self._sizes["train"]))]

    @property
    def val(self) -> list[np.ndarray]:
        return [self.array("val", k) for k in range(len(self._sizes["val"]))]

    def _map(self, i: int) -> tuple[Path, list[np.ndarray], list[int]]:
        if i not in self._mapped:
            shard = self.manifest["shards"][i]
            path = _shard_path(self.folder, shard)
            arrays, offsets = _map_shard(path, shard["tokens"])
            if "batches" in shard and [len(a) for a in arrays] != [n for n in shard["batches"] if n]:
                raise DataError(f"{path}: record batches of {[len(a) for a in arrays]} tokens, manifest.json says "
                                f"{shard['batches']}")
            self._mapped[i] = (path, arrays, offsets)
        return self._mapped[i]


def read_error(path: str | Path, exc: Exception, message: str) -> DataError:
    """The DataError for a failed open or read of `path`: `message`, unless the process ran out of
    file descriptors (many domains x shards), which is said as such, not as a corrupt shard,
    whatever the library that hit it says."""
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return DataError(f"{path}: too many open files (this process may open {soft}; many domains and shards "
                         f"need more: raise it with `ulimit -n`)")
    return DataError(message)


def _map_shard(path: Path, expected: int) -> tuple[list[np.ndarray], list[int]]:
    """The shard's record batches as zero-copy views of a memory map (never a copy: a shard
    written in several batches stays several arrays, and sequences are cut inside each).

    Returns (arrays, byte offset of each array in the file): the sampler reads training windows
    with pread at those offsets instead of through the map, because a fault on a mapped file maps
    a whole page-cache folio (64 KB to 2 MB), so scattered reads through a map would grow the
    process's RSS with the corpus it samples."""
    if not path.is_file():
        raise DataError(f"{path}: shard listed in manifest.json is missing")
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        whole = pa.py_buffer(mm)
        col = pa.ipc.open_file(whole).read_all().column("tokens")
        if col.type != pa.int32() or col.null_count:
            raise DataError(f"{path}: column 'tokens' must be int32 without nulls, got {col.type}")
        chunks = [c for c in col.chunks if len(c)]
        arrays = [c.to_numpy(zero_copy_only=True) for c in chunks]
        offsets = [c.buffers()[1].address - whole.address + 4 * c.offset for c in chunks]
    except (OSError, pa.ArrowInvalid, KeyError, ValueError) as exc:
        raise read_error(path, exc, f"{path}: corrupt or truncated shard ({str(exc).splitlines()[0]})") from None
    if sum(map(len, arrays)) != expected:
        raise DataError(f"{path}: holds {sum(map(len, arrays))} tokens, manifest.json says {expected}")
    return arrays, offsets


def _shard_name(folder: Path | str, shard: dict[str, Any]) -> str:
    name = shard.get("file")
    if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
        raise DataError(f"{folder}: manifest.json lists a shard file {name!r} outside its folder")
    return name


def _shard_path(folder: Path | str, shard: dict[str, Any]) -> Path:
    """A shard's local file: in the folder, or fetched once into the node's cache (checksum checked)."""
    name = _shard_name(folder, shard)
    if isinstance(folder, str) and fs.is_remote(folder):
        return fs.fetch_shard(fs.join(folder, name), str(shard.get("sha256", "")))
    return Path(folder) / name


def verify_domain(folder: str | Path, tokenizer: str | Path | None = None) -> dict[str, Any]:
    """End to end (reads every byte): manifest schema and totals, each shard's checksum, length and
    token ids (all below vocab_size), and the tokenizer (`tokenizer`, else the manifest's own
    `tokenizer` path when it still exists): its hash and vocabulary size must be the manifest's."""
    from corpus.tokenizer import load_tokenizer, tokenizer_hash

    folder = str(folder) if fs.is_remote(folder) else fs.local_path(folder)
    manifest = read_manifest(folder)
    vocab = manifest["vocab_size"]
    for shard in manifest["shards"]:
        path = _shard_path(folder, shard)
        arrays, _ = _map_shard(path, shard["tokens"])
        if file_sha256(path) != shard["sha256"]:
            raise DataError(f"{path}: checksum does not match manifest.json")
        for a in arrays:
            if len(a) and (int(a.min()) < 0 or int(a.max()) >= vocab):
                raise DataError(f"{path}: token id {int(a.max()) if int(a.max()) >= vocab else int(a.min())} "
                                f"outside the vocabulary [0, {vocab})")
    tok = tokenizer or manifest.get("tokenizer")
    if tok and (tokenizer or Path(tok).is_file()):
        if tokenizer_hash(tok) != manifest["tokenizer_hash"]:
            raise DataError(f"{tok}: tokenizer hash {tokenizer_hash(tok)} is not the manifest's "
                            f"{manifest['tokenizer_hash']} (the shards were made with another tokenizer)")
        size = load_tokenizer(tok).get_vocab_size()
        if size != vocab:
            raise DataError(f"{tok}: vocabulary of {size} tokens, the manifest says {vocab}")
    return manifest
