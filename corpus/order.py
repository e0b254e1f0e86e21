"""Data order as pure functions: per-epoch permutations, batch composition, per-domain cursors.

Nothing here touches tokens. A domain is `n` numbered sequences; the order a run reads them in
is a pure function of (seed, domain, epoch) and the cursor where the domain stopped, so any rank,
retry or resumed controller derives the same sequence ids without shipping them around.

- **Permutation**: a keyed Feistel network over the next power of 4 >= n, cycle-walked back into
  [0, n). A bijection computed per position in O(1) memory: an epoch of a billion-token domain
  costs no permutation table (a numpy permutation of 8M sequences would be 64 MB per epoch).
- **Cursor** `{"epoch": e, "pos": p, "data": id}`: the next sequence of the domain is position p of
  epoch e's permutation; `data` names the exact shards the positions refer to. Reading k
  sequences advances the cursor by k, rolling over into epoch e+1 (a fresh permutation) at n.
  Within an epoch no position repeats and none is skipped, whatever the weights per round.
- **Composition**: a step's B rows are apportioned to domains by largest remainder on what the
  round owes each domain (its weight x B per step, plus the rounding carried from earlier steps
  of the round), so every batch is within one row of its weights and the round's totals are too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_ROUNDS = 6


def _key(*parts: Any) -> int:
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _mix(x: np.ndarray, k: np.uint64) -> np.ndarray:
    """splitmix64 finaliser of (x ^ k): a cheap keyed round function with full avalanche."""
    z = (x ^ k) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def permute(pos: np.ndarray, n: int, seed: int, domain: str, epoch: int) -> np.ndarray:
    """Sequence ids at positions `pos` (each in [0, n)) of the epoch's permutation of [0, n)."""
    pos = np.asarray(pos, dtype=np.uint64)
    if n <= 1:
        return np.zeros(pos.shape, dtype=np.int64)
    half = max(1, (int(n - 1).bit_length() + 1) // 2)  # 4**half >= n: cycle walking needs < 4 tries per id
    lo_mask = np.uint64((1 << half) - 1)
    keys = [np.uint64(_key(seed, domain, epoch, r)) for r in range(_ROUNDS)]
    shift = np.uint64(half)

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & lo_mask
        for k in keys:
            left, right = right, left ^ (_mix(right, k) & lo_mask)
        return (left << shift) | right

    with np.errstate(over="ignore"):  # uint64 multiplication wraps by design
        out = feistel(pos)
        todo = out >= np.uint64(n)
        while todo.any():
            out[todo] = feistel(out[todo])
            todo = out >= np.uint64(n)
    return out.astype(np.int64)


def batch_counts(weights: Mapping[str, float], names: list[str], batch_size: int, steps: int) -> np.ndarray:
    """Rows per domain at each step of a round, [steps, len(names)] ints summing to batch_size per row."""
    w = np.array([max(float(weights.get(d, 0.0)), 0.0) for d in names], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("batch_counts: every weight is zero")
    share = w / w.sum() * batch_size
    owed = np.zeros(len(names))
    out = np.zeros((steps, len(names)), dtype=np.int64)
    for k in range(steps):
        owed += share
        c = np.floor(np.maximum(owed, 0)).astype(np.int64)
        short = batch_size - int(c.sum())
        if short > 0:  # largest remainder; ties go to the earlier name (stable sort)
            order = np.argsort(-(owed - c), kind="stable")
            c[order[:short]] += 1
        elif short < 0:  # only when earlier rounding over-served someone: take back from the most served
            order = np.argsort(owed - c, kind="stable")
            for i in order:
                take = min(int(c[i]), -short)
                c[i] -= take
                short += take
                if short == 0:
                    break
        out[k] = c
        owed -= c
    return out


def new_cursor(data_id: str) -> dict[str, Any]:
    return {"epoch": 0, "pos": 0, "data": data_id}


def advance(cursor: Mapping[str, Any], k: int, n: int) -> dict[str, Any]:
    """The cursor after reading k more sequences of a domain of n sequences."""
    absolute = cursor["epoch"] * n + cursor["pos"] + k
    return {"epoch": absolute // n, "pos": absolute % n, "data": cursor["data"]}


def read(cursor: Mapping[str, Any], k: int, n: int, seed: int, domain: str) -> np.ndarray:
    """The ids of the next k sequences from `cursor` (crossing into later epochs as needed)."""
    out = np.empty(k, dtype=np.int64)
    epoch, pos, done = int(cursor["epoch"]), int(cursor["pos"]), 0
    while done < k:
        take = min(k - done, n - pos)
        out[done:done + take] = permute(np.arange(pos, pos + take), n, seed, domain, epoch)
        done += take
        epoch, pos = epoch + 1, 0
    return out


def epochs_used(cursor: Mapping[str, Any]) -> int:
    """Epochs a domain has been read into: a cursor at (1, 0) finished exactly one epoch."""
    return int(cursor["epoch"]) + (1 if cursor["pos"] else 0)
