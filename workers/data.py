"""Deterministic weighted sampling over memory-mapped domains, and the Lightning DataModule.

A batch is a pure function of (seed, stage, round, step, weights): the generator is seeded from
exactly those, so a re-run or resumed round sees identical batches.
"""

from __future__ import annotations

import numpy as np
import torch

from store.datasets import DomainData


def _window(arrays: list[np.ndarray], rng: np.random.Generator, length: int, aligned: int | None = None) -> np.ndarray:
    if aligned:  # a replay buffer: whole stored sequences only, never a window across two of them
        flat = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        k = int(rng.integers(0, len(flat) // aligned))
        return flat[k * aligned:(k + 1) * aligned]
    sizes = np.array([max(len(a) - length + 1, 0) for a in arrays], dtype=np.float64)
    shard = int(rng.choice(len(arrays), p=sizes / sizes.sum())) if len(arrays) > 1 else 0
    start = int(rng.integers(0, sizes[shard]))
    return arrays[shard][start:start + length]


class MixtureSampler:
    """Draws batches of seq_len+1 token windows from domains by weight."""

    def __init__(self, domains: dict[str, DomainData], weights: dict[str, float], seq_len: int,
                 batch_size: int, seed: int, stage: int, round_: int):
        self.names = sorted(d for d, w in weights.items() if w > 0)
        p = np.array([weights[d] for d in self.names], dtype=np.float64)
        self.p = p / p.sum()
        self.domains, self.seq_len, self.batch_size = domains, seq_len, batch_size
        self.key = (seed, stage, round_)
        self.digest = _weights_digest(weights)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids [B, L+1], domain index into self.names [B]) for stage-local `step`."""
        rng = np.random.default_rng([*self.key, step, self.digest])
        which = rng.choice(len(self.names), size=self.batch_size, p=self.p)
        rows = [_window(self.domains[self.names[i]].train, rng, self.seq_len + 1,
                        self.domains[self.names[i]].manifest.get("aligned")) for i in which]
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))
        return ids, torch.from_numpy(which.astype(np.int64))


def _weights_digest(weights: dict[str, float]) -> int:
    import hashlib

    text = ",".join(f"{d}={weights[d]:.12g}" for d in sorted(weights))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def val_batches(data: DomainData, seq_len: int, batch_size: int, n_batches: int) -> list[torch.Tensor]:
    """Fixed validation windows evenly spaced over the val split (same every round)."""
    stream = np.concatenate(data.val) if len(data.val) > 1 else data.val[0]
    count = n_batches * batch_size
    hi = len(stream) - seq_len - 1
    starts = np.linspace(0, max(hi, 0), num=count).astype(np.int64)
    rows = np.stack([stream[s:s + seq_len + 1] for s in starts]).astype(np.int64)
    return [torch.from_numpy(rows[i:i + batch_size]) for i in range(0, count, batch_size)]
