"""Costs that must not grow with a run's length or its corpus: what this measures so far.

Replay fill (corpus/replay.py): a reservoir of a fixed token budget filled from a stage that read
10M and 200M tokens of a synthetic domain (row i is i repeated; nothing on disk, so the numbers are
the fill's own). Peak traced memory (tracemalloc: numpy's buffers included) and seconds for each;
`replay_rss_ratio` is the 200M peak over the 10M peak (target <= 1.2: memory follows the buffer,
not the stage). Raw JSON: benchmarks/results/long_run.json.

    python benchmarks/long_run.py
"""

from __future__ import annotations

import json
import platform
import sys
import time
import tracemalloc
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WINDOW = 129  # seq_len 128 + the shifted target
BUFFER_TOKENS = 8_000_000


class Synthetic:
    """A domain of `n` sequences whose row i is i repeated: any size, no bytes."""

    name, data_id = "big", "synthetic"

    def __init__(self, n: int):
        self.n, self.read = n, 0

    def rows(self, ids):
        self.read += len(ids)
        return np.repeat(np.asarray(ids, dtype=np.int64)[:, None], WINDOW, axis=1)


def replay_fill(stage_tokens: int) -> dict:
    from corpus.order import advance, new_cursor
    from corpus.replay import ReplayBuffer, stage_stream

    source = Synthetic(stage_tokens // WINDOW)
    start = new_cursor(source.data_id)
    buf = ReplayBuffer("unused", BUFFER_TOKENS, WINDOW)
    tracemalloc.start()
    t0 = time.perf_counter()
    buf.add(stage_stream(source, start, advance(start, source.n, source.n), seed=0), np.random.default_rng(0))
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"stage_tokens": stage_tokens, "sequences": source.n, "buffer_tokens": buf.tokens(),
            "rows_read": source.read, "peak_traced_mb": peak / 1e6, "seconds": seconds,
            "stacked_stream_mb": source.n * WINDOW * 4 / 1e6}


def main() -> None:
    rows = [replay_fill(t) for t in (10_000_000, 200_000_000)]
    for r in rows:
        print(f"replay fill from a {r['stage_tokens'] / 1e6:.0f}M-token stage into {r['buffer_tokens'] / 1e6:.1f}M: "
              f"peak {r['peak_traced_mb']:.0f} MB (the stream stacked: {r['stacked_stream_mb']:.0f} MB), "
              f"{r['seconds']:.2f} s, {r['rows_read']:,} rows read")
    out = {"date": str(date.today()), "machine": f"{platform.machine()}, python {platform.python_version()}",
           "replay_rss_ratio": rows[1]["peak_traced_mb"] / rows[0]["peak_traced_mb"],
           "replay_seconds_ratio": rows[1]["seconds"] / rows[0]["seconds"], "rows": rows}
    print(f"replay_rss_ratio {out['replay_rss_ratio']:.2f} (target <= 1.2)")
    path = ROOT / "benchmarks" / "results" / "long_run.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
