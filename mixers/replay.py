"""Bounded replay buffers of the sequences earlier stages trained on, persisted as Arrow shards.

A buffer is a domain folder (cpt-shards/1, sequences stored back to back and sampled aligned), so
mixers see `replay/<domain>` like any other domain. It is filled after each stage from exactly the
windows that stage drew for the domain (batches are a pure function of the plan, so the stream is
regenerated, not shipped back from workers). Reservoir sampling keeps a uniform sample of everything
seen under a token budget; FIFO keeps the most recent sequences.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mixers.base import buffer_name
from store.datasets import FORMAT, DomainData, ShardWriter, publish_folder, read_manifest, write_json_atomic
from store.errors import DataError


class ReplayBuffer:
    def __init__(self, folder: str | Path, capacity_tokens: int, seq_tokens: int, policy: str = "reservoir",
                 source: dict[str, Any] | None = None):
        if policy not in ("reservoir", "fifo"):
            raise DataError(f"replay buffer policy must be reservoir or fifo, got {policy!r}")
        self.folder, self.policy, self.seq_tokens = Path(folder), policy, seq_tokens
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
        """Write atomically (temp folder + rename)."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.folder.with_name(f".{self.folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            w = ShardWriter(tmp, "train")
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


def stage_stream(domains: dict[str, DomainData], rounds: list[dict[str, Any]], domain: str, seq_len: int,
                 batch_size: int, seed: int, stage: int) -> Iterable[np.ndarray]:
    """The windows of `domain` a finished stage trained on, in training order.

    rounds: [{'round': r, 'weights': {...}, 'first': stage step, 'steps': n}] of the committed attempts."""
    from workers.data import MixtureSampler

    for r in rounds:
        if r["weights"].get(domain, 0) <= 0:
            continue
        sampler = MixtureSampler(domains, r["weights"], seq_len, batch_size, seed, stage, r["round"])
        idx = sampler.names.index(domain)
        for step in range(r["first"], r["first"] + r["steps"]):
            ids, which = sampler.batch(step)
            yield from ids[which == idx].numpy()


def fill_buffer(folder: Path, name: str, source_folder: str, spec_buffer: dict[str, Any], seq_len: int,
                stream: Iterable[np.ndarray], seed: int, stage: int, tag: str) -> ReplayBuffer:
    """Add a stage's stream to the buffer at `folder` (created if needed); idempotent per `tag`."""
    if (folder / "manifest.json").exists():
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


def fill_from_stage(folder: Path, domain: str, paths: dict[str, str], rounds: list[dict[str, Any]],
                    spec_buffer: dict[str, Any], seq_len: int, batch_size: int, seed: int, stage: int) -> ReplayBuffer:
    """Add the windows of `domain` that stage `stage` trained on (its committed rounds) to its buffer."""
    domains = {n: DomainData.open(n, paths[n]) for r in rounds for n in r["weights"]}
    stream = stage_stream(domains, rounds, domain, seq_len, batch_size, seed, stage)
    return fill_buffer(folder, buffer_name(domain), paths[domain], spec_buffer, seq_len, stream, seed, stage,
                       f"stage-{stage}")
