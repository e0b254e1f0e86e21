"""Round checkpoints at growing model sizes: full (gathered to rank 0, written by it) vs sharded
(every rank its part) vs sharded + asynchronous (staged to host memory, written beside training).

Two CPU ranks (gloo) holding a Llama-style model of ~45M / ~135M / ~375M parameters sharded with
torch's FSDP2 (`fully_shard`, which runs on CPU; Lightning Fabric's FSDP strategy is GPU-only, but
the checkpoint code is the same: each rank holds half the parameters and AdamW state, as FSDP
ranks do), after one AdamW step. Per size and mode, in fresh processes: the stall (seconds the
ranks could not train; for the asynchronous mode the second save, when the host buffers exist, and
the first), the write time, rank 0's peak RSS, and the time to restore into a live sharded model.
The modes call the same functions the ranks call (workers/checkpoint.py, workers/sharded.py).
Then a projection to 8B and 70B on 8 and 64 GPUs from the measured rates (formulas in `project`).

    python benchmarks/checkpoint.py [--sizes 25M,125M,350M] [--out benchmarks/results/checkpoint.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"25M": dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=1376),
         "125M": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048),
         "350M": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=2816)}
VOCAB, SEQ = 32000, 64
MODES = ("full", "sharded", "sharded+async")


def _rank(rank: int, world: int, size: str, mode: str, folder: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    group = dist.new_group(backend="gloo")
    from store.configs import ModelConfig
    from workers import sharded
    from workers.checkpoint import full_state, read_checkpoint, restore_state, save_state
    from workers.model import build_model

    def build():
        from torch.distributed.fsdp import fully_shard

        model = build_model(ModelConfig(**SIZES[size], tie_embeddings=False), VOCAB, SEQ, 0)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    model, opt = build()
    ids = torch.randint(0, VOCAB, (1, SEQ + 1), generator=torch.Generator().manual_seed(rank))
    model(input_ids=ids[:, :-1], labels=ids[:, 1:]).loss.backward()
    opt.step()
    params = sum(p.numel() for p in model.parameters())  # the global count (DTensors)
    meta = {"model_signature": "bench", "model_config": model.config.to_dict()}
    dist.barrier()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if mode == "full":
        msd, tensors, steps = full_state(model, opt)
        if rank == 0:
            save_state(folder, msd, tensors, steps, meta, tied=False)
        dist.barrier()  # every rank waits for rank 0's write (the runner broadcasts the outcome)
        stall = write = time.perf_counter() - t0
    elif mode == "sharded":
        sharded.write(folder, sharded.mine(sharded.state_of(model, opt), rank, world), meta, rank, group)
        stall = write = time.perf_counter() - t0
    else:
        buffers: dict = {}
        stalls = []
        for _ in range(2):  # a run saves every round: the second save reuses the host buffers
            t0 = time.perf_counter()
            state = sharded.staged(sharded.mine(sharded.state_of(model, opt), rank, world), buffers)
            stalls.append(time.perf_counter() - t0)  # from here the ranks train; the write goes on beside them
            stall, first = stalls[-1], stalls[0]
            t1 = time.perf_counter()
            sharded.write(folder, state, meta, rank, group)
            write = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del model, opt
    fresh, fresh_opt = build()
    dist.barrier()
    t2 = time.perf_counter()
    if mode == "full":
        weights, opt_state = read_checkpoint(folder, None, True)
        restore_state(fresh, fresh_opt, weights, opt_state, tied=False)
    else:
        sharded.read(folder, fresh, fresh_opt, True, group)
    dist.barrier()
    restore = time.perf_counter() - t2
    if rank == 0:
        Path(out).write_text(json.dumps({"model_params": params, "ranks": world, "mode": mode, "stall_s": stall,
                                         "write_s": write, "rank0_peak_rss_mb": peak,
                                         "rank0_rss_before_save_mb": before, "restore_s": restore,
                                         **({"stall_first_save_s": first} if mode == "sharded+async" else {})}))
    dist.destroy_process_group()


def measure(size: str, mode: str, work: Path, port: int) -> dict:
    import torch.multiprocessing as mp

    folder, out = work / f"{size}-{mode}", work / f"{size}-{mode}.json"
    mp.spawn(_rank, args=(2, size, mode, str(folder), port, str(out)), nprocs=2, join=True)
    shutil.rmtree(folder, ignore_errors=True)
    return json.loads(out.read_text())


def project(rows: list[dict], d2h: float = 10e9) -> list[dict]:
    """8B and 70B on 8 and 64 GPUs, today's full mode vs sharded + async, from the measured rates.

    A checkpoint is C = 12 B/param (fp32 weights and AdamW's two moments). Full: rank 0 gathers C
    into host memory and writes it alone at the single-writer rate r1 measured here; every rank
    waits: stall = C / r1. Sharded + async: each of N ranks copies C/N to host memory (on a GPU the
    device-to-host copy, taken as `d2h` = 10 GB/s per GPU: PCIe 4 with pageable memory; pinned
    does better), stall = (C/N) / d2h; its write, (C/N) / r1 per rank in parallel, overlaps the
    next round and must only finish within it."""
    big = max(r["model_params"] for r in rows)
    full = next(r for r in rows if r["model_params"] == big and r["mode"] == "full")
    r1 = 12 * full["model_params"] / full["write_s"]
    out = []
    for params in (8e9, 70e9):
        for gpus in (8, 64):
            c = 12 * params
            full_stall, async_stall = c / r1, c / gpus / d2h
            out.append({"model_params": params, "gpus": gpus, "checkpoint_bytes": c,
                        "rank0_host_bytes_full": c, "bytes_per_rank_sharded": c / gpus,
                        "stall_full_s": full_stall, "stall_sharded_async_s": async_stall,
                        "share_of_30min_round_full": full_stall / 1800,
                        "share_of_30min_round_sharded_async": async_stall / 1800,
                        "write_per_rank_sharded_s": c / gpus / r1, "r1_bytes_per_s": r1, "d2h_bytes_per_s": d2h})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="25M,125M,350M")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "checkpoint.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:  # on the repository's disk, not a tmpfs
        for k, size in enumerate(args.sizes.split(",")):
            for j, mode in enumerate(MODES):
                row = measure(size, mode, Path(tmp), 29600 + 10 * k + j)
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "rows": rows, "projection": project(rows)}
    Path(args.out).write_text(json.dumps(result, indent=2))
    for p in result["projection"]:
        print(json.dumps(p))


if __name__ == "__main__":
    main()
