"""Sampling without replacement: numbered sequences of memory-mapped domains, read by cursor.

A domain's train split is documents tokenized back to back, each followed by EOS (ingest.py), so
a document boundary is an EOS token inside the stream. A *sequence* is a packed window of
seq_len + 1 tokens (inputs and shifted targets) cut from that stream at a stride of seq_len:
consecutive sequences share one token, so every token after a shard's first is a target exactly
once per epoch. Windows cross document boundaries (the EOS tells the model one ended, as in GPT-2
style packing) but never shard boundaries; a shard's tail shorter than a window is not trained on
(at most seq_len tokens per shard, reported by `tokens_dropped`). A replay buffer stores whole
sequences back to back (`aligned`): there the stride is the window.

Which sequences a round reads is decided by corpus.order from the plan's cursors and weights;
this module only turns sequence ids into token rows, in O(1) per sequence whatever the domain's
size (memory maps and a per-shard offset table; nothing is concatenated).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from corpus import order
from corpus.shards import DomainData, read_error
from store.errors import DataError


class SequenceSource:
    """A domain's train split as n numbered sequences of `window` tokens."""

    def __init__(self, data: DomainData, seq_len: int):
        self._fds: dict[str, int] = {}
        self.name, self.data = data.name, data
        aligned = data.manifest.get("aligned")
        self.window = seq_len + 1
        if aligned and aligned != self.window:
            raise DataError(f"{data.folder}: replay buffer of {aligned}-token sequences, the run reads "
                            f"{self.window} (seq_len + 1)")
        self.stride = self.window if aligned else seq_len
        self.aligned = bool(aligned)
        sizes = data.sizes("train")
        if aligned and any(s % self.window for s in sizes):
            raise DataError(f"{data.folder}: replay buffer shards do not hold whole {self.window}-token "
                            f"sequences; delete the buffer folder and resume (it is refilled from the run)")
        counts = np.array([(s - self.window) // self.stride + 1 if s >= self.window else 0 for s in sizes],
                          dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.n = int(self.offsets[-1])
        self.tokens_dropped = int(sum(s - (c - 1) * self.stride - self.window if c else s
                                      for s, c in zip(sizes, counts, strict=True)))
        shards = [s["sha256"] for s in data.manifest["shards"] if s["split"] == "train"]
        self.data_id = hashlib.sha256(f"{self.window}:{self.stride}:{','.join(shards)}".encode()).hexdigest()[:16]

    @property
    def where(self) -> str:
        return str(self.data.folder)

    @classmethod
    def open(cls, name: str, folder: str, seq_len: int, tokenizer_hash: str | None = None) -> SequenceSource:
        return cls(DomainData.open(name, folder, tokenizer_hash), seq_len)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Token rows [len(ids), window] of the given sequence ids (pread: see shards._map_shard)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n):
            raise DataError(f"{self.data.folder}: sequence id out of range [0, {self.n})")
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        starts = (ids - self.offsets[shard]) * self.stride
        out = np.empty((len(ids), self.window), dtype=np.int64)
        nbytes = 4 * self.window
        for j, (s, a) in enumerate(zip(shard, starts, strict=True)):
            path, base = self.data.where(int(s))
            fd = self._fds.get(path)
            if fd is None:
                try:
                    fd = self._fds[path] = os.open(path, os.O_RDONLY)
                except OSError as exc:
                    raise read_error(path, exc, f"{path}: cannot open shard ({exc.strerror})") from None
            raw = os.pread(fd, nbytes, base + 4 * int(a))
            if len(raw) != nbytes:
                raise DataError(f"{path}: shard shorter than its manifest says (truncated after opening?)")
            out[j] = np.frombuffer(raw, dtype=np.int32)
        vocab = self.data.manifest["vocab_size"]
        if len(out) and (out.min() < 0 or out.max() >= vocab):  # a shard changed after its checksum was read
            j = int(np.flatnonzero((out < 0).any(1) | (out >= vocab).any(1))[0])
            raise DataError(f"{self.data.where(int(shard[j]))[0]}: sequence {int(ids[j])} holds token ids outside "
                            f"the vocabulary [0, {vocab}) (a corrupt or rewritten shard; `cpt data verify` checks it)")
        return out

    def close(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()


class RoundSampler:
    """The global batches of one round, sliced per rank: a pure function of the plan's fields."""

    def __init__(self, sources: Mapping[str, SequenceSource], weights: Mapping[str, float],
                 cursors: Mapping[str, Mapping[str, Any]], batch_size: int, steps: int, seed: int,
                 stage: int, round_: int):
        self.names = sorted(d for d, w in weights.items() if w > 0)
        for d in self.names:
            if sources[d].n == 0:
                raise DataError(f"{sources[d].data.folder}: domain {d!r} has no full sequence to train on")
        self.sources, self.cursors, self.seed = sources, cursors, seed
        self.batch_size, self.key = batch_size, (seed, stage, round_)
        self.counts = order.batch_counts(weights, self.names, batch_size, steps)
        self.before = np.cumsum(self.counts, axis=0) - self.counts  # rows of each domain before step k

    @classmethod
    def fresh(cls, sources: Mapping[str, SequenceSource], weights: Mapping[str, float], batch_size: int,
              steps: int, seed: int = 0) -> RoundSampler:
        """A first round: every domain read from its start (benchmarks, tools)."""
        live = {d: s for d, s in sources.items() if weights.get(d, 0) > 0}
        return cls(sources, weights, order.start_cursors({}, live), batch_size, steps, seed, 0, 0)

    def step_ids(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(sequence id, domain index) of every row of the global batch at round step k, in row order."""
        ids, dom = [], []
        for i, d in enumerate(self.names):
            c = int(self.counts[k, i])
            if c:
                src = self.sources[d]
                cur = order.advance(self.cursors[d], int(self.before[k, i]), src.n)
                ids.append(order.read(cur, c, src.n, self.seed, d))
                dom.append(np.full(c, i, dtype=np.int64))
        ids_a, dom_a = np.concatenate(ids), np.concatenate(dom)
        mix = np.random.default_rng([*self.key, k]).permutation(self.batch_size)  # ranks get mixed rows
        return ids_a[mix], dom_a[mix]

    def batch(self, k: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids [B/world, L+1], domain index [B/world]) of this rank's rows at round step k."""
        ids, dom = self.step_ids(k)
        per = self.batch_size // world
        ids, dom = ids[rank * per:(rank + 1) * per], dom[rank * per:(rank + 1) * per]
        rows = np.empty((per, self.sources[self.names[0]].window), dtype=np.int64)
        for i, d in enumerate(self.names):
            mine = dom == i
            if mine.any():
                rows[mine] = self.sources[d].rows(ids[mine])
        return torch.from_numpy(rows), torch.from_numpy(dom)

    def round_ids(self) -> dict[str, np.ndarray]:
        """Every sequence id each domain contributes to the round, in reading order."""
        total = self.counts.sum(0)
        return {d: order.read(self.cursors[d], int(total[i]), self.sources[d].n, self.seed, d)
                for i, d in enumerate(self.names)}

    def end_cursors(self) -> dict[str, dict[str, Any]]:
        """Cursors after the round: the start cursors of the next (domains not read keep theirs)."""
        out = {d: dict(c) for d, c in self.cursors.items()}
        total = self.counts.sum(0)
        for i, d in enumerate(self.names):
            out[d] = order.advance(self.cursors[d], int(total[i]), self.sources[d].n)
        return out


class ValBatches(Sequence[torch.Tensor]):
    """Fixed validation windows evenly spaced over the val split (the same every round), read
    when a batch is asked for: a rank reads (and, from object storage, fetches) only the shards
    of the batches it evaluates. Windows never cross shard boundaries; a large val split is never
    concatenated."""

    def __init__(self, data: DomainData, seq_len: int, batch_size: int, n_batches: int):
        self.data, self.window, self.batch_size = data, seq_len + 1, batch_size
        fits = np.array([max(n - self.window + 1, 0) for n in data.sizes("val")], dtype=np.int64)
        if fits.sum() == 0:
            raise DataError(f"{data.folder}: no val shard holds {self.window} tokens (seq_len + 1)")
        self.offsets = np.concatenate([[0], np.cumsum(fits)])
        self.where = np.linspace(0, self.offsets[-1] - 1, num=n_batches * batch_size).astype(np.int64)
        self.n = n_batches

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        where = self.where[(i % self.n) * self.batch_size:(i % self.n + 1) * self.batch_size]
        shard = np.searchsorted(self.offsets, where, side="right") - 1
        rows = [self.data.array("val", int(s))[w - self.offsets[s]:w - self.offsets[s] + self.window]
                for s, w in zip(shard, where, strict=True)]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

