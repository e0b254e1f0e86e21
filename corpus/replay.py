"""Bounded replay buffers of the sequences earlier stages trained on, persisted as Arrow shards.

A buffer is a domain folder (cpt-shards/1, sequences stored back to back and sampled aligned), so
mixers see `replay/<domain>` like any other domain. It is filled after each stage from exactly the
sequences that stage read of the domain: the positions between the domain's cursor before the
stage and after it (data order is a pure function of the cursors, so the stream is regenerated,
not shipped back from workers). Positions are chosen first and only the rows that end in the
buffer are read: a fill costs the buffer's size in memory, not the stage's. A buffer is read
like any domain (cursor, epochs), one sequence at a time from its memory-mapped shards, whatever
its size. Reservoir sampling keeps a uniform sample of everything seen under a token budget; FIFO
keeps the most recent sequences.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from corpus import fs, order
from corpus.names import buffer_name
from corpus.sampler import SequenceSource
from corpus.shards import (
    FORMAT,
    SHARD_TOKENS,
    DomainData,
    ShardWriter,
    publish_folder,
    read_manifest,
    write_json_atomic,
)
from store.errors import DataError

READ_ROWS = 16384
"""Rows read from the source at once (a chunk's int64 rows: 16k x window x 8 bytes)."""
DRAW_CHUNK = 1 << 20
"""Reservoir draws per chunk (a few arrays of this many int64s)."""


class StageStream:
    """The sequences of a domain a finished stage trained on, in the order it read them: exactly
    the positions between the domain's cursor before the stage and after it. Random access: the
    data order is a keyed permutation per epoch (corpus.order.permute), so the sequence at any
    stream index is computed, not found by reading what comes before it."""

    def __init__(self, source, start: dict[str, Any] | None, end: dict[str, Any] | None, seed: int):
        self.source, self.seed = source, seed
        n = source.n
        if end is None:
            self.first, self.total = 0, 0
            return
        start = start or order.new_cursor(end["data"])
        self.first = start["epoch"] * n + start["pos"]
        self.total = end["epoch"] * n + end["pos"] - self.first

    def __len__(self) -> int:
        return self.total

    def ids(self, index: np.ndarray) -> np.ndarray:
        """Sequence ids at stream indices `index`."""
        return order.at(self.first + np.asarray(index, dtype=np.int64), self.source.n, self.seed, self.source.name)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Token rows [len(index), window] (int32) at stream indices `index`, read a chunk at a time."""
        index = np.asarray(index, dtype=np.int64)
        out = None
        for at in range(0, len(index), READ_ROWS):
            got = self.source.rows(self.ids(index[at:at + READ_ROWS]))
            if out is None:
                out = np.empty((len(index), got.shape[1]), dtype=np.int32)
            out[at:at + len(got)] = got
        return out if out is not None else np.zeros((0, 0), dtype=np.int32)

    def __iter__(self):
        for at in range(0, self.total, READ_ROWS):
            yield from self.rows(np.arange(at, min(at + READ_ROWS, self.total)))


class RowStream:
    """A stream given as rows (tests, small inputs): the same interface as StageStream."""

    def __init__(self, rows: Iterable[np.ndarray]):
        listed = [np.asarray(r, dtype=np.int32) for r in rows]
        self.data = np.stack(listed) if listed else np.zeros((0, 0), dtype=np.int32)

    def __len__(self) -> int:
        return len(self.data)

    def rows(self, index: np.ndarray) -> np.ndarray:
        return self.data[np.asarray(index, dtype=np.int64)]


def reservoir_slots(capacity: int, filled: int, seen: int, total: int, rng: np.random.Generator,
                    check: Callable[[], None] = lambda: None, chunk: int | None = None) -> np.ndarray:
    """Algorithm R over stream indices only: which index of the new stream ends in each of the
    buffer's `capacity` slots (-1: the slot keeps what it holds, or stays empty). The same draws as
    adding the rows one by one (numpy's bounded integers draw element by element either way), in
    chunks: memory is the buffer's slots and one chunk, whatever the stream's length."""
    chunk = chunk or DRAW_CHUNK
    slots = np.full(capacity, -1, dtype=np.int64)
    direct = min(capacity - filled, total)  # a buffer not yet full takes rows without a draw
    slots[filled:filled + direct] = np.arange(direct)
    t, seen = direct, seen + direct
    while t < total:
        check()
        k = min(chunk, total - t)
        j = rng.integers(0, np.arange(seen + 1, seen + k + 1, dtype=np.int64))
        hit = np.nonzero(j < capacity)[0]
        if len(hit):
            js, ts = j[hit][::-1], (t + hit)[::-1]  # the last index drawn for a slot wins
            taken, first = np.unique(js, return_index=True)
            slots[taken] = ts[first]
        t, seen = t + k, seen + k
    return slots


class ReplayBuffer:
    def __init__(self, folder: str | Path, capacity_tokens: int, seq_tokens: int, policy: str = "reservoir",
                 source: dict[str, Any] | None = None):
        if policy not in ("reservoir", "fifo"):
            raise DataError(f"replay buffer policy must be reservoir or fifo, got {policy!r}")
        # a local folder, or a URI (the run's shared storage, checkpoints.uri)
        self.folder = str(folder) if fs.is_remote(folder) else Path(folder)
        self.policy, self.seq_tokens = policy, seq_tokens
        self.capacity = max(1, capacity_tokens // seq_tokens)
        self.seqs = np.zeros((0, seq_tokens), dtype=np.int32)
        self.seen = 0
        self.filled_from: list[str] = []
        self.source = source or {}

    @classmethod
    def load(cls, folder: str | Path) -> ReplayBuffer:
        m = read_manifest(folder)
        buf = cls(folder, m["capacity_tokens"], m["aligned"], m["policy"], m["source"])
        data = DomainData.open(m["domain"], folder)
        flat = np.concatenate(data.train) if data.train else np.zeros(0, dtype=np.int32)
        buf.seqs = flat.reshape(-1, buf.seq_tokens).copy()
        buf.seen, buf.filled_from = m["seen"], list(m["filled_from"])
        return buf

    def add(self, stream: StageStream | RowStream | Iterable[np.ndarray], rng: np.random.Generator,
            check: Callable[[], None] = lambda: None) -> None:
        """Add a stream: reservoir sampling (Algorithm R) keeps a uniform sample of everything seen,
        FIFO the latest. Only the rows that end in the buffer are read (positions are chosen first),
        so time and memory follow the buffer's size and the stream's length, never its bytes.
        `check` is called between chunks (a cancel or SIGTERM stops a long fill)."""
        if not hasattr(stream, "rows"):
            stream = RowStream(stream)
        total = len(stream)
        if total == 0:
            return
        if self.policy == "fifo":
            tail = min(total, self.capacity)
            new = self._checked(stream.rows(np.arange(total - tail, total)))
            self.seqs = np.concatenate([self.seqs, new])[-self.capacity:]
            self.seen += total
            return
        filled = len(self.seqs)
        slots = reservoir_slots(self.capacity, filled, self.seen, total, rng, check)
        size = min(self.capacity, filled + total)
        out = np.empty((size, self.seq_tokens), dtype=np.int32)
        out[:filled] = self.seqs
        take = np.nonzero(slots[:size] >= 0)[0]
        out[take] = self._checked(stream.rows(slots[take]))
        self.seqs, self.seen = out, self.seen + total

    def _checked(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) and rows.shape[1] != self.seq_tokens:
            raise DataError(f"replay buffer {self.folder}: sequences of {rows.shape[1]} tokens, expected "
                            f"{self.seq_tokens}")
        return rows

    def tokens(self) -> int:
        return int(self.seqs.size)

    def save(self, name: str) -> None:
        """Write atomically (temp folder + rename; to a URI: built locally, uploaded manifest last)."""
        if isinstance(self.folder, str):
            import tempfile

            remote = self.folder
            with tempfile.TemporaryDirectory(prefix="cpt-buffer-") as staging:
                self.folder = Path(staging) / "buffer"
                try:
                    self.save(name)
                    fs.upload_folder(self.folder, remote)
                finally:
                    self.folder = remote
            return
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.folder.with_name(f".{self.folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            w = ShardWriter(tmp, "train", self.seq_tokens * max(1, SHARD_TOKENS // self.seq_tokens))  # whole sequences
            w.add(self.seqs.reshape(-1))
            w.flush()
            write_json_atomic(tmp / "manifest.json", {
                "format": FORMAT, "domain": name, "aligned": self.seq_tokens, "policy": self.policy,
                "capacity_tokens": self.capacity * self.seq_tokens, "seen": self.seen,
                "filled_from": self.filled_from, "source": self.source,
                "tokenizer_hash": self.source.get("tokenizer_hash"), "vocab_size": self.source.get("vocab_size"),
                "eos_id": self.source.get("eos_id"), "documents": {"train": len(self.seqs), "val": 0},
                "tokens": {"train": self.tokens(), "val": 0}, "shards": w.shards})
            publish_folder(tmp, self.folder, overwrite=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def stage_stream(source: SequenceSource, start: dict[str, Any] | None, end: dict[str, Any] | None,
                 seed: int) -> StageStream:
    """The sequences of a domain a finished stage trained on (cursor `start` to `end`)."""
    return StageStream(source, start, end, seed)


def _exists(folder: str | Path) -> bool:
    try:
        read_manifest(folder)
        return True
    except DataError:
        return False


def fill_buffer(folder: str | Path, name: str, source_folder: str, spec_buffer: dict[str, Any], seq_len: int,
                stream: StageStream | Iterable[np.ndarray], seed: int, stage: int, tag: str,
                check: Callable[[], None] = lambda: None) -> ReplayBuffer:
    """Add a stage's stream to the buffer at `folder` (created if needed); idempotent per `tag`
    (a fill stopped by `check` leaves the buffer as it was, and the resumed run fills it again)."""
    if _exists(folder):
        buf = ReplayBuffer.load(folder)
        if tag in buf.filled_from:
            return buf
    else:
        m = read_manifest(source_folder)
        buf = ReplayBuffer(folder, spec_buffer["tokens"], seq_len + 1, spec_buffer.get("policy", "reservoir"),
                           {"domain": m.get("domain"), "tokenizer_hash": m["tokenizer_hash"],
                            "vocab_size": m["vocab_size"], "eos_id": m["eos_id"], "folder": str(source_folder)})
    buf.add(stream, np.random.default_rng([seed, stage, 7919]), check)
    buf.filled_from.append(tag)
    buf.save(name)
    return buf


def fill_from_stage(folder: Path, domain: str, source_folder: str, start: dict[str, Any] | None,
                    end: dict[str, Any] | None, spec_buffer: dict[str, Any], seq_len: int, seed: int,
                    stage: int, check: Callable[[], None] = lambda: None) -> ReplayBuffer:
    """Add the sequences of `domain` that stage `stage` trained on (cursor `start` to `end`) to its buffer."""
    source = SequenceSource.open(domain, source_folder, seq_len)
    stream = stage_stream(source, start, end, seed)
    return fill_buffer(folder, buffer_name(domain), source_folder, spec_buffer, seq_len, stream, seed, stage,
                       f"stage-{stage}", check)
