"""Bounded replay buffers of the sequences earlier stages trained on, persisted as Arrow shards.

A buffer is a domain folder (cpt-shards/1, sequences stored back to back and sampled aligned), so
mixers see `replay/<domain>` like any other domain. It is filled after each stage from exactly the
sequences that stage read of the domain: the positions between the domain's cursor before the
stage and after it (data order is a pure function of the cursors, so the stream is regenerated,
not shipped back from workers). A buffer is read like any domain (cursor, epochs), one sequence
at a time from its memory-mapped shards, whatever its size. Reservoir sampling keeps a uniform
sample of everything seen under a token budget; FIFO keeps the most recent sequences.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable
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

    def add(self, seqs: Iterable[np.ndarray], rng: np.random.Generator) -> None:
        rows = [np.asarray(s, dtype=np.int32) for s in seqs]
        if not rows:
            return
        new = np.stack(rows)
        if new.shape[1] != self.seq_tokens:
            raise DataError(f"replay buffer {self.folder}: sequences of {new.shape[1]} tokens, expected "
                            f"{self.seq_tokens}")
        if self.policy == "fifo":
            self.seqs = np.concatenate([self.seqs, new])[-self.capacity:]
            self.seen += len(new)
            return
        buf = list(self.seqs)
        for row in new:  # Algorithm R
            self.seen += 1
            if len(buf) < self.capacity:
                buf.append(row)
            else:
                j = int(rng.integers(0, self.seen))
                if j < self.capacity:
                    buf[j] = row
        self.seqs = np.stack(buf)

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
                 seed: int, chunk: int = 4096) -> Iterable[np.ndarray]:
    """The sequences of a domain a finished stage trained on, in the order it read them: exactly
    the positions between the domain's cursor before the stage and after it (corpus.order)."""
    if end is None:
        return
    start = start or order.new_cursor(end["data"])
    n = source.n
    total = (end["epoch"] * n + end["pos"]) - (start["epoch"] * n + start["pos"])
    cur = dict(start)
    for done in range(0, total, chunk):
        k = min(chunk, total - done)
        yield from source.rows(order.read(cur, k, n, seed, source.name))
        cur = order.advance(cur, k, n)


def _exists(folder: str | Path) -> bool:
    try:
        read_manifest(folder)
        return True
    except DataError:
        return False


def fill_buffer(folder: str | Path, name: str, source_folder: str, spec_buffer: dict[str, Any], seq_len: int,
                stream: Iterable[np.ndarray], seed: int, stage: int, tag: str) -> ReplayBuffer:
    """Add a stage's stream to the buffer at `folder` (created if needed); idempotent per `tag`."""
    if _exists(folder):
        buf = ReplayBuffer.load(folder)
        if tag in buf.filled_from:
            return buf
    else:
        m = read_manifest(source_folder)
        buf = ReplayBuffer(folder, spec_buffer["tokens"], seq_len + 1, spec_buffer.get("policy", "reservoir"),
                           {"domain": m.get("domain"), "tokenizer_hash": m["tokenizer_hash"],
                            "vocab_size": m["vocab_size"], "eos_id": m["eos_id"], "folder": str(source_folder)})
    buf.add(stream, np.random.default_rng([seed, stage, 7919]))
    buf.filled_from.append(tag)
    buf.save(name)
    return buf


def fill_from_stage(folder: Path, domain: str, source_folder: str, start: dict[str, Any] | None,
                    end: dict[str, Any] | None, spec_buffer: dict[str, Any], seq_len: int, seed: int,
                    stage: int) -> ReplayBuffer:
    """Add the sequences of `domain` that stage `stage` trained on (cursor `start` to `end`) to its buffer."""
    source = SequenceSource.open(domain, source_folder, seq_len)
    stream = stage_stream(source, start, end, seed)
    return fill_buffer(folder, buffer_name(domain), source_folder, spec_buffer, seq_len, stream, seed, stage,
                       f"stage-{stage}")
