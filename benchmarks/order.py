"""Batch composition (`corpus.order.batch_counts`): how far a domain's running total strays from its
share, and what a step costs, against the rule it replaced (largest remainder per step on a
running sum of what the round owes, kept here as the baseline).

    python benchmarks/order.py [--trials 20000] [--steps 20000]

Quality: random mixes (2-8 domains, batch 1-64, 1-60 steps, fixed seed), with weights drawn
uniformly from [0, 1] ("continuous") or from multiples of 1/8 ("ties": what people write, 0.25,
0.5, ...); per mix, the largest |rows given so far - weight x batch x steps so far| over every
domain and step; per rule the worst, mean and 90th percentile of that over the mixes, and how
many mixes ever stray a whole row. Speed: one long round of each of three mixes, the
baseline's time over the new rule's (one process, interleaved, best of 3).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus.order import batch_counts  # noqa: E402


def largest_remainder(weights: dict[str, float], names: list[str], batch_size: int, steps: int) -> np.ndarray:
    """The previous rule, verbatim: floors of what is owed, spare rows by largest remainder."""
    w = np.array([max(float(weights.get(d, 0.0)), 0.0) for d in names], dtype=np.float64)
    share = w / w.sum() * batch_size
    owed = np.zeros(len(names))
    out = np.zeros((steps, len(names)), dtype=np.int64)
    for k in range(steps):
        owed += share
        c = np.floor(np.maximum(owed, 0)).astype(np.int64)
        short = batch_size - int(c.sum())
        if short > 0:
            order = np.argsort(-(owed - c), kind="stable")
            c[order[:short]] += 1
        elif short < 0:
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


def worst_drift(rule, w: list[float], b: int, steps: int) -> float:
    names = [f"d{i}" for i in range(len(w))]
    c = rule(dict(zip(names, w, strict=True)), names, b, steps)
    share = np.array(w) / sum(w) * b
    return float(np.abs(np.cumsum(c, 0) - np.outer(np.arange(1, steps + 1), share)).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "order.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    quality = {}
    for kind in ("continuous", "ties"):
        drift = {"largest_remainder": [], "quota_edf": []}
        for _ in range(args.trials):
            n = int(rng.integers(2, 9))
            w = rng.random(n) if kind == "continuous" else rng.integers(0, 9, n) / 8
            if w.sum() < 1e-3:
                continue
            b, steps = int(rng.integers(1, 65)), int(rng.integers(1, 61))
            drift["largest_remainder"].append(worst_drift(largest_remainder, list(w), b, steps))
            drift["quota_edf"].append(worst_drift(batch_counts, list(w), b, steps))
        quality[kind] = {k: {"mixes": len(v), "worst": max(v), "mean": float(np.mean(v)),
                             "p90": float(np.quantile(v, 0.9)), "mixes_a_row_off": int(sum(d >= 1 for d in v))}
                         for k, v in drift.items()}
    mixes = {"3 domains": {"a": 0.5, "b": 0.3, "c": 0.2},
             "8 domains": {f"d{i}": 1 / (i + 1) for i in range(8)},
             "2 domains, 5% replay": {"new": 0.95, "replay": 0.05}}
    speed = {}
    for label, mix in mixes.items():
        times = {"largest_remainder": [], "quota_edf": []}
        for _ in range(3):
            for key, rule in (("largest_remainder", largest_remainder), ("quota_edf", batch_counts)):
                t0 = time.perf_counter()
                rule(mix, list(mix), 256, args.steps)
                times[key].append(time.perf_counter() - t0)
        best = {k: min(v) for k, v in times.items()}
        speed[label] = {"steps": args.steps, "batch": 256, "us_per_step": {k: 1e6 * v / args.steps for k, v in
                                                                          best.items()},
                        "baseline_over_new": best["largest_remainder"] / best["quota_edf"]}
    result = {"quality": quality, "speed": speed}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
