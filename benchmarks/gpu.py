"""GPU throughput: cpt's worker group vs a bare PyTorch DDP loop, with MFU (run by gpu.sh).

On every GPU of the machine (one rank per GPU), bf16-mixed, seq 1024: a ~125M and a ~1B
Llama-style model, cpt with DDP and with FSDP for a few rounds, and a bare torch.distributed
DDP loop on the same model, data (the built-in code-py domain, same sampler) and global batch.
Prints tokens/s, MFU (cpt's own, per round) and cpt/bare; raw JSON to benchmarks/results/gpu.json.
Needs torch with CUDA and this repository's dependencies importable (gpu.sh unpacks the bundle that
benchmarks/gpu_bundle.sh makes where they are missing); reaches no network.

`--cpu-smoke` rehearses the same path without a GPU (2 gloo ranks, DDP only, a tiny model, short
sequences, numbers meaningless): what to run before spending a lent GPU machine's minutes on it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_spec = importlib.util.spec_from_file_location("bench_scale", Path(__file__).with_name("scale.py"))
scale = importlib.util.module_from_spec(_spec)
sys.modules["bench_scale"] = scale  # the bare loop's spawned ranks unpickle bench_scale._bare_rank by name
_spec.loader.exec_module(scale)

MODELS = {
    "125M": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 2048},
    "1B": {"hidden_size": 2048, "num_layers": 16, "num_heads": 16, "num_kv_heads": 8, "intermediate_size": 5632},
}
SMOKE = {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128}}
SEQ, DOMAIN = 1024, "code-py"


def run_spec(home: Path, model: dict, gpus: int, strategy: str, steps: int, rounds: int, micro: int,
             seq: int = SEQ, cuda: bool = True) -> dict:
    batch = micro * gpus * 2  # two micro-batches per rank per step: accumulation exercised too
    per_rank = {"gpus_per_worker": 1, "cpus_per_worker": 2} if cuda else {"cpus_per_worker": 1}
    return {"name": f"gpu-{strategy}", "seed": 0, "tokenizer": str(home / "tokenizer.json"), "seq_len": seq,
            "batch_size": batch, "micro_batch_size": micro, "model": model,
            "domains": {DOMAIN: str(home / "data" / DOMAIN)},
            "stages": [{"name": "s", "domains": [DOMAIN], "tokens": steps * rounds * batch * seq, "rounds": rounds,
                        "schedule": {"kind": "cosine", "peak_lr": 3e-4, "min_lr": 3e-5, "warmup": 0.0}}],
            # a 1B round's checkpoint with AdamW state is ~13 GB and the machine's disk 64 GiB: keep one
            "checkpoints": {"keep_last": 1, "keep_stage_ends": False}, "eval_batches": 1,
            "resources": {"workers": gpus, **per_rank, "strategy": strategy,
                          "precision": "bf16-mixed" if cuda else "32-true"}}


def cpt_run(home: Path, raw: dict) -> list[dict]:
    import yaml

    from orchestrator.controller import Controller
    from orchestrator.spec import parse_spec
    from orchestrator.submit import create_run
    from store.runs import RunStore

    h = scale._home(home)
    store = RunStore(h.store_url)
    text = yaml.safe_dump(raw)
    run_id = create_run(store, h, parse_spec(text), text)
    assert Controller(store, h, run_id, tracking=False, poll_s=0.05).run() == "finished"
    shutil.rmtree(store.get_run(run_id).workdir, ignore_errors=True)  # the next run's checkpoints need the disk
    return [{"tokens_per_s": (x := r.result).tokens_per_s, "mfu": x.mfu,
             "fit_s": x.fit_s, "round_s": x.round_s} for r in store.rounds(run_id, status="finished")]


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="125M,1B")
    ap.add_argument("--steps", type=int, default=20, help="steps per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per run (the first is warm-up, the rest timed)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="rehearse the path on CPU (see the docstring)")
    args = ap.parse_args()
    cuda = not args.cpu_smoke
    gpus, models, seq = (torch.cuda.device_count(), MODELS, SEQ) if cuda else (2, SMOKE, 128)
    if args.cpu_smoke:
        args.models, args.steps, args.rounds = "tiny", min(args.steps, 3), min(args.rounds, 2)
        args.out = args.out.with_name("gpu-cpu-smoke.json") if args.out.name == "gpu.json" else args.out
    elif gpus == 0:
        sys.exit("gpu.py: no CUDA device visible")
    from corpus.builtin import prepare_builtins
    from orchestrator import cluster

    home = Path(tempfile.mkdtemp(prefix="cpt-gpu-"))
    h = scale._home(home)
    prepare_builtins(h.data, h.tokenizer, [DOMAIN], install=False, log=print)
    cluster.connect(h, num_cpus=None if cuda else 2, dashboard=False)  # a benchmark: nobody watches it
    rows, t0 = [], time.time()
    for name in args.models.split(","):
        micro = {"125M": 16, "1B": 8}.get(name, 2)
        model = {**models[name], "tie_embeddings": False}  # the same for cpt and the bare loop
        strategies = ("ddp", "fsdp") if cuda else ("ddp",)  # Lightning Fabric's FSDP is GPU-only
        for strategy in strategies:
            rounds = cpt_run(home, run_spec(home, model, gpus, strategy, args.steps, args.rounds, micro,
                                            seq, cuda))
            steady = rounds[1:] or rounds  # round 0 includes CUDA warm-up and compilation of kernels
            tps = sum(r["tokens_per_s"] for r in steady) / len(steady)
            mfu = [r["mfu"] for r in steady if r["mfu"] is not None]
            rows.append({"model": name, "strategy": strategy, "gpus": gpus, "tokens_per_s": tps,
                         "mfu": sum(mfu) / len(mfu) if mfu else None, "rounds": rounds})
        bare = scale.bare_ddp(home, model, args.steps, micro * gpus * 2, world=gpus, domain=DOMAIN,
                              seq=seq, micro=micro, cuda=cuda)
        for r in rows[-len(strategies):]:
            r["bare_ddp_tokens_per_s"] = bare
            r["ratio"] = r["tokens_per_s"] / bare
            mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
            print(f"{name:>5} {r['strategy']}: {r['tokens_per_s']:,.0f} tok/s, MFU {mfu}, "
                  f"bare DDP {bare:,.0f} tok/s, cpt/bare {r['ratio']:.3f}", flush=True)
    cluster.shutdown()
    device = torch.cuda.get_device_name(0) if cuda else "CPU (--cpu-smoke)"
    out = {"date": str(date.today()), "machine": f"{platform.node()} {gpus}x {device}",
           "seconds": time.time() - t0, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
