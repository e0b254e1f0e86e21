"""The per-sequence training loss's layout (`workers.model.token_losses`): logits flattened to
[B*L, V] rows (now) against logits transposed to [B, V, L] (before), one training step
(forward + backward + AdamW) of cpt's model each, on this machine's CPU.

    python benchmarks/loss_layout.py [--repeats 30]

Per shape: the median step time of each layout, interleaved (a, b, a, b, ...) after warm-up,
`speedup` = transposed over flattened; and the largest difference between the two layouts'
per-sequence losses (they compute the same thing). Raw output: benchmarks/results/loss_layout.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.model import build_model, token_losses  # noqa: E402

SHAPES = [  # (model, vocab, seq_len, batch)
    ({"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128}, 4096, 64, 8),
    ({"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 256}, 32768, 128, 4),
    ({"hidden_size": 256, "num_layers": 4, "num_heads": 8, "intermediate_size": 704}, 8192, 256, 4),
]


def transposed(model, ids):
    """The layout token_losses used before: cross-entropy over [B, V, L] (a 2-D loss's layout)."""
    logits = model(input_ids=ids[:, :-1]).logits
    return F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none").mean(dim=1)


def step_time(model, opt, fn, ids) -> float:
    t0 = time.perf_counter()
    fn(model, ids).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loss_layout.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for cfg, vocab, seq, batch in SHAPES:
        model = build_model(cfg, vocab, seq, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(0, vocab, (batch, seq + 1))
        with torch.no_grad():
            diff = float((token_losses(model, ids) - transposed(model, ids)).abs().max())
        times = {"flattened": [], "transposed": []}
        for _ in range(3):  # warm-up
            step_time(model, opt, token_losses, ids)
            step_time(model, opt, transposed, ids)
        for _ in range(args.repeats):
            times["flattened"].append(step_time(model, opt, token_losses, ids))
            times["transposed"].append(step_time(model, opt, transposed, ids))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"model": cfg, "vocab": vocab, "seq_len": seq, "batch": batch,
               "params": sum(p.numel() for p in model.parameters()),
               "flattened_ms": 1e3 * med["flattened"], "transposed_ms": 1e3 * med["transposed"],
               "speedup": med["transposed"] / med["flattened"], "max_abs_loss_diff": diff}
        rows.append(row)
        print(f"vocab {vocab:6d} seq {seq:4d} batch {batch}: flattened {row['flattened_ms']:.1f} ms, "
              f"transposed {row['transposed_ms']:.1f} ms, speedup {row['speedup']:.2f}x, "
              f"loss diff {diff:.1e}")
    out = {"date": str(date.today()), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "torch": torch.__version__, "repeats": args.repeats, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
