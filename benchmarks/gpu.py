"""GPU throughput: cpt's worker group vs a bare PyTorch DDP loop, with MFU (run by gpu.sh).

On every GPU of the machine (one rank per GPU), bf16-mixed, seq 1024: a ~125M and a ~1B
Llama-style model, cpt with DDP and with FSDP for a few rounds, and a bare torch.distributed
DDP loop on the same model, data (the built-in code-py domain, same sampler) and global batch.
Prints tokens/s, MFU (cpt's own, per round) and cpt/bare; raw JSON to benchmarks/results/gpu.json.
Needs torch with CUDA and this repository installed; reaches no network.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
_spec = importlib.util.spec_from_file_location("bench_scale", Path(__file__).with_name("scale.py"))
scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale)

MODELS = {
    "125M": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 2048},
    "1B": {"hidden_size": 2048, "num_layers": 16, "num_heads": 16, "num_kv_heads": 8, "intermediate_size": 5632},
}
SEQ, DOMAIN = 1024, "code-py"


def run_spec(home: Path, model: dict, gpus: int, strategy: str, steps: int, rounds: int, micro: int) -> dict:
    batch = micro * gpus * 2  # two micro-batches per rank per step: accumulation exercised too
    return {"name": f"gpu-{strategy}", "seed": 0, "tokenizer": str(home / "tokenizer.json"), "seq_len": SEQ,
            "batch_size": batch, "micro_batch_size": micro, "model": {**model, "tie_embeddings": False},
            "domains": {DOMAIN: str(home / "data" / DOMAIN)},
            "stages": [{"name": "s", "domains": [DOMAIN], "tokens": steps * rounds * batch * SEQ, "rounds": rounds,
                        "schedule": {"kind": "cosine", "peak_lr": 3e-4, "min_lr": 3e-5, "warmup": 0.0}}],
            "eval_batches": 1, "resources": {"workers": gpus, "gpus_per_worker": 1, "cpus_per_worker": 2,
                                             "strategy": strategy, "precision": "bf16-mixed"}}


def cpt_run(home: Path, raw: dict) -> list[dict]:
    import yaml

    from orchestrator.controller import Controller, create_run
    from orchestrator.spec import parse_spec
    from store.runs import RunStore
    from workers.plan import RoundResult

    h = scale._home(home)
    store = RunStore(h.store_url)
    text = yaml.safe_dump(raw)
    run_id = create_run(store, h, parse_spec(text), text)
    assert Controller(store, h, run_id, tracking=False, poll_s=0.05).run() == "finished"
    return [{"tokens_per_s": (x := RoundResult.from_json(r.result_json)).tokens_per_s, "mfu": x.mfu,
             "fit_s": x.fit_s, "round_s": x.round_s} for r in store.rounds(run_id, status="finished")]


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="125M,1B")
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    args = ap.parse_args()
    gpus = torch.cuda.device_count()
    if gpus == 0:
        sys.exit("gpu.py: no CUDA device visible")
    from corpus.builtin import prepare_builtins
    from orchestrator import cluster

    home = Path(tempfile.mkdtemp(prefix="cpt-gpu-"))
    h = scale._home(home)
    prepare_builtins(h.data, h.tokenizer, [DOMAIN], install=False, log=print)
    cluster.connect(h)
    rows, t0 = [], time.time()
    for name in args.models.split(","):
        micro = 16 if name == "125M" else 8
        for strategy in ("ddp", "fsdp"):
            rounds = cpt_run(home, run_spec(home, MODELS[name], gpus, strategy, args.steps, args.rounds, micro))
            steady = rounds[1:] or rounds  # round 0 includes CUDA warm-up and compilation of kernels
            tps = sum(r["tokens_per_s"] for r in steady) / len(steady)
            mfu = [r["mfu"] for r in steady if r["mfu"] is not None]
            rows.append({"model": name, "strategy": strategy, "gpus": gpus, "tokens_per_s": tps,
                         "mfu": sum(mfu) / len(mfu) if mfu else None, "rounds": rounds})
        bare = scale.bare_ddp(home, MODELS[name], args.steps, micro * gpus * 2, world=gpus, domain=DOMAIN,
                              seq=SEQ, micro=micro, cuda=True)
        for r in rows[-2:]:
            r["bare_ddp_tokens_per_s"] = bare
            r["ratio"] = r["tokens_per_s"] / bare
            print(f"{name:>5} {r['strategy']}: {r['tokens_per_s']:,.0f} tok/s, MFU "
                  f"{(r['mfu'] or 0):.1%}, bare DDP {bare:,.0f} tok/s, cpt/bare {r['ratio']:.3f}", flush=True)
    cluster.shutdown()
    out = {"date": str(date.today()), "machine": f"{platform.node()} {gpus}x {torch.cuda.get_device_name(0)}",
           "seconds": time.time() - t0, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
