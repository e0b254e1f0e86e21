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
- **Composition**: a step's B rows go to domains so that after every step each domain's total
  is its ideal total (weight x B x steps so far) rounded down or up: the round's totals are
  within one row of the weights, and each batch within two (earliest-deadline-first over unit
  rows; `batch_counts` says why it cannot fail).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from store.errors import DataError

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
    """Rows per domain at each step of a round, [steps, len(names)] ints summing to batch_size per row.

    After every step k each domain's total is its ideal total (weight x batch_size x k) rounded
    down or up, never further off (the quota property, at every step, not only the round's end),
    so each step's rows are within two of its weights and the round's totals within one. Rows
    are handed out as unit jobs: domain i's j-th row may go no earlier than the step where its
    ideal total exceeds j - 1 (else i would be a whole row ahead) and no later than the step
    where it reaches j (else a whole row behind). Earliest-deadline-first over steps of
    batch_size slots meets every such window whenever some schedule does, and one does (the
    seat-by-seat quota method of Balinski & Young), so the rule below never fails; among rows due
    at the same step the larger fractional share goes first, then the earlier name."""
    w = [max(float(weights.get(d, 0.0)), 0.0) for d in names]
    total = sum(w)
    if total <= 0:
        raise ValueError("batch_counts: every weight is zero")
    share = [x / total * batch_size for x in w]
    n = len(names)
    given = [0] * n
    out = np.zeros((steps, n), dtype=np.int64)
    # plain Python over the few domains of a mix: a step costs microseconds (numpy's per-call
    # overhead would dominate), which matters for stages of millions of steps
    for k in range(steps):
        row, spare, candidates = [0] * n, batch_size, []
        for i in range(n):
            ideal = share[i] * (k + 1)  # one product, not a running sum: no drift over a long round
            whole = round(ideal)
            if abs(ideal - whole) < 1e-9:  # an exact integer stays one
                ideal = float(whole)
            lo = math.floor(ideal)
            row[i] = max(lo - given[i], 0)  # rows due by the end of this step
            spare -= row[i]
            if given[i] + row[i] < math.ceil(ideal):  # one more row would not put it a whole row ahead
                # (the step by which that row is due, the larger fractional share first, name order)
                due = math.ceil((lo + 1) / share[i] - 1e-9) if share[i] > 1e-300 else math.inf
                candidates.append((due, lo - ideal, i))
        if spare < 0 or spare > len(candidates):  # impossible by the argument above; never guess
            raise RuntimeError(f"batch_counts: no quota-respecting batch at step {k} (weights {w})")
        if spare:
            for _, _, i in sorted(candidates)[:spare]:
                row[i] += 1
        for i in range(n):
            given[i] += row[i]
        out[k] = row
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


def at(positions: np.ndarray, n: int, seed: int, domain: str) -> np.ndarray:
    """The ids at absolute read positions (epoch * n + pos, in any order): `read` for scattered
    positions, as replay fills pick them."""
    positions = np.asarray(positions, dtype=np.int64)
    epoch, pos = positions // n, positions % n
    out = np.empty(len(positions), dtype=np.int64)
    for e in np.unique(epoch):
        mask = epoch == e
        out[mask] = permute(pos[mask], n, seed, domain, int(e))
    return out


class Sized(Protocol):
    """A domain as cursors count it (corpus.sampler.SequenceSource, or the planner's DomainSize)."""

    n: int
    """Sequences per epoch."""
    data_id: str
    """The exact shards the sequence ids refer to."""
    where: str
    """Its folder or URI (for messages)."""


def start_cursors(previous: Mapping[str, Mapping[str, Any]], sizes: Mapping[str, Sized],
                  restart_changed: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """Cursors a round starts from: where each domain stopped, or at its start if never read.

    A cursor that names other data than the domain holds now is an error (the shards changed
    under a running run), except for domains in `restart_changed` (replay buffers, refilled
    between stages: a new buffer is read from a new epoch 0)."""
    out = {}
    for d, src in sizes.items():
        cur = previous.get(d)
        if cur is None or (cur["data"] != src.data_id and d in restart_changed):
            out[d] = new_cursor(src.data_id)
        elif cur["data"] != src.data_id:
            raise DataError(f"domain {d!r} ({src.where}) changed since the run last read it "
                            f"(shards differ): the run's data accounting would be wrong; restore the "
                            f"original shards or start a new run")
        else:
            out[d] = dict(cur)
    return out


def end_cursors(cursors: Mapping[str, Mapping[str, Any]], weights: Mapping[str, float], n: Mapping[str, int],
                batch_size: int, steps: int) -> dict[str, dict[str, Any]]:
    """Cursors after a round of `steps` steps at `weights` (domains not read keep theirs)."""
    names = sorted(d for d, w in weights.items() if w > 0)
    total = batch_counts(weights, names, batch_size, steps).sum(0)
    out = {d: dict(c) for d, c in cursors.items()}
    for i, d in enumerate(names):
        out[d] = advance(cursors[d], int(total[i]), n[d])
    return out


def epochs_used(cursor: Mapping[str, Any]) -> int:
    """Epochs a domain has been read into: a cursor at (1, 0) finished exactly one epoch."""
    return int(cursor["epoch"]) + (1 if cursor["pos"] else 0)
