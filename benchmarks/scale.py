"""Scale-out costs of the persistent Ray Train worker group, measured on this machine.

1. Per-round overhead (controller-side round wall minus the fit loop) with the persistent group
   vs restarting the group every round, for ~2M, ~25M and ~125M-parameter Llama-style models,
   1 rank on CPU. The overhead of a persistent group should not grow with model size except for
   the checkpoint write (reported separately), and its share of a round of the example length
   (en-to-de.yaml: 146 steps of 16 x 128 tokens) is projected from the measured step time.
2. Two CPU ranks (DDP, gloo, 1 thread each): cpt's fit tokens/s over a bare torch.distributed DDP
   loop on the same model, data (same sampler) and global batch, run before and after cpt; and the
   same bare loop run as a Ray Train group, which splits the gap into Ray Train's and cpt's parts.
3. Contention: one rank's tokens/s alone and beside two busy loops, with Ray's workers at niceness
   15 (Ray's default) and 0 (what cpt sets in clusters it starts).

    python benchmarks/scale.py [--quick]      # raw JSON: benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # name -> model spec (parameter counts printed from the built model)
    "2M": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 352},
    "25M": {"hidden_size": 512, "num_layers": 7, "num_heads": 8, "intermediate_size": 1376},
    "125M": {"hidden_size": 768, "num_layers": 16, "num_heads": 12, "intermediate_size": 2048},
}
EXAMPLE_ROUND_STEPS = 146  # en-to-de.yaml: 600k tokens / (16 x 128) / 2 rounds, rounded down
SEQ = 128


def spec(home: Path, model: dict, steps: int, rounds: int, batch: int, workers: int = 1, cpus: int = 2) -> dict:
    return {"name": "scale", "seed": 0, "tokenizer": str(home / "tokenizer.json"), "seq_len": SEQ,
            "batch_size": batch, "model": model, "domains": {"prose-en": str(home / "data" / "prose-en")},
            "stages": [{"name": "s", "domains": ["prose-en"], "tokens": steps * rounds * batch * SEQ,
                        "rounds": rounds, "schedule": {"kind": "cosine", "peak_lr": 1e-3, "min_lr": 1e-4,
                                                       "warmup": 0.0}}],
            "eval_batches": 1, "resources": {"workers": workers, "cpus_per_worker": cpus}}


def cpt_rounds(home: Path, raw: dict, persistent: bool, reporter=None) -> list[dict]:
    import yaml

    from orchestrator.controller import Controller
    from orchestrator.group import OwnGroups
    from orchestrator.spec import parse_spec
    from orchestrator.submit import create_run
    from store.runs import RunStore

    store = RunStore(f"sqlite:///{home / 'store.db'}")
    text = yaml.safe_dump(raw)
    run_id = create_run(store, _home(home), parse_spec(text), text)
    ctl = Controller(store, _home(home), run_id, reporter, tracking=False,  # the CLI's poll interval
                     groups=OwnGroups(persistent=persistent))
    assert ctl.run() == "finished"
    out = []
    for r in store.rounds(run_id, status="finished"):
        res = r.result
        out.append({"round_s": res.round_s, "fit_s": res.fit_s, "eval_s": res.eval_s, "save_s": res.save_s,
                    "overhead_s": res.round_s - res.fit_s,
                    "orchestration_s": res.round_s - res.fit_s - res.eval_s - res.save_s,
                    "tokens_per_s": res.tokens_per_s})
    return out


def _home(root: Path):
    from orchestrator.home import Home

    return Home(root, f"sqlite:///{root / 'store.db'}")


def overhead_rows(home: Path, sizes: list[str], steps: int, rounds: int, batch: int) -> list[dict]:
    from workers.model import build_model

    vocab = json.loads((home / "data" / "prose-en" / "manifest.json").read_text())["vocab_size"]
    rows = []
    for name in sizes:
        params = sum(p.numel() for p in build_model(SIZES[name], vocab, SEQ, 0).parameters())
        for persistent in (True, False):
            rs = cpt_rounds(home, spec(home, SIZES[name], steps, rounds, batch), persistent)
            later = rs[1:]  # round 0 of either mode pays the group start
            step_s = statistics.median(r["fit_s"] for r in later) / steps
            med = {k: statistics.median(r[k] for r in later) for k in ("overhead_s", "save_s", "eval_s",
                                                                           "orchestration_s")}
            example_fit = step_s * EXAMPLE_ROUND_STEPS * 16 / batch  # an example-length round of this model
            rows.append({"model": name, "params": params, "group": "persistent" if persistent else "restart",
                         "first_round_overhead_s": rs[0]["overhead_s"], **med, "step_s": step_s,
                         "share_of_example_round": med["overhead_s"] / (med["overhead_s"] + example_fit),
                         "orchestration_share_of_example_round":
                             med["orchestration_s"] / (med["overhead_s"] + example_fit),
                         "rounds": rs})
            print(f"  {name:>5} {rows[-1]['group']:>10}: wall-fit {med['overhead_s']:6.2f} s/round = eval "
                  f"{med['eval_s']:5.2f} + checkpoint {med['save_s']:5.2f} + orchestration "
                  f"{med['orchestration_s']:5.2f}; step {step_s:6.3f} s", flush=True)
    return rows


def _bare_setup(rank: int, world: int, home: str, model: dict, steps: int, batch: int, domain: str, seq: int,
                cuda: bool):
    """Model (DDP-wrapped over 2+ ranks), AdamW and sampler as cpt's rank builds them; the process
    group exists."""
    import torch

    from corpus.sampler import RoundSampler, SequenceSource
    from workers.fabric import make_optimizer
    from workers.model import build_model

    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    data = {domain: SequenceSource.open(domain, f"{home}/data/{domain}", seq)}
    vocab = data[domain].data.manifest["vocab_size"]
    net = build_model(model, vocab, seq, 0).to(device)
    if world > 1:  # one rank trains unwrapped, as cpt's single-device rank does (DDP of one all-reduces)
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[rank] if cuda else None)
    opt = make_optimizer(net, {"weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8})
    return net, opt, RoundSampler.fresh(data, {domain: 1.0}, batch, steps + 1), device


def _bare_loop(rank: int, world: int, home: str, model: dict, steps: int, batch: int, domain: str = "prose-en",
               seq: int = SEQ, micro: int | None = None, cuda: bool = False) -> float:
    """What cpt's rank does per step, without cpt; tokens/s of steps 1..steps (rank 0's clock)."""
    import contextlib

    import torch
    import torch.distributed as dist

    from workers.model import token_losses

    net, opt, sampler, device = _bare_setup(rank, world, home, model, steps, batch, domain, seq, cuda)
    share = batch // world
    micro = micro or share
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    t0 = 0.0
    for step in range(steps + 1):
        if step == 1:  # the first step pays allocator and DDP bucket setup, as cpt's does (timed after)
            dist.barrier()
            t0 = time.perf_counter()
        ids, _ = sampler.batch(step, rank, world)
        ids = ids.to(device)
        for m in range(0, share, micro):
            last = m + micro >= share or world == 1
            sync = contextlib.nullcontext() if last else net.no_sync()
            with sync, autocast:
                loss = token_losses(net, ids[m:m + micro]).sum() / share
            loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    return steps * batch * seq / (time.perf_counter() - t0)


def _bare_rank(rank: int, world: int, port: int, home: str, model: dict, steps: int, batch: int, q,
               **kw) -> None:
    """One rank of a plain torch.distributed DDP loop in a process of its own (no Ray anywhere)."""
    import torch
    import torch.distributed as dist

    if not kw.get("cuda"):
        torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if kw.get("cuda") else "gloo", rank=rank, world_size=world)
    tps = _bare_loop(rank, world, home, model, steps, batch, **kw)
    if rank == 0:
        q.put(tps)
    dist.destroy_process_group()


def _ray_bare_rank(config: dict) -> None:
    """The same bare loop as a Ray Train rank (Ray Train's process group, placement, controller and
    helper actors; no Fabric, no mailbox, no cpt): separates what Ray Train's presence costs from
    what cpt's own loop costs."""
    import ray.train
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tps = _bare_loop(rank, world, config["home"], config["model"], config["steps"], config["batch"])
    if rank == 0:
        Path(config["out"]).write_text(json.dumps(tps))


def ray_bare_ddp(home: Path, model: dict, steps: int, batch: int, world: int = 2) -> float:
    """Tokens/s of the bare loop on a Ray Train group configured as cpt's (1 CPU per rank, gloo)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.torch_backend import NodeBoundTorchConfig

    out = home / "ray-bare.json"
    out.unlink(missing_ok=True)
    TorchTrainer(_ray_bare_rank, train_loop_config={"home": str(home), "model": model, "steps": steps,
                                                    "batch": batch, "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=world, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name=f"ray-bare-{time.time_ns()}", storage_path=str(home / "ray-bare"),
                                      failure_config=FailureConfig(max_failures=0)),
                 torch_config=NodeBoundTorchConfig(backend="gloo")).fit()
    return json.loads(out.read_text())


def bare_ddp(home: Path, model: dict, steps: int, batch: int, world: int = 2, **kw) -> float:
    """Tokens/s of the bare DDP loop over `world` spawned ranks (kw: domain, seq, micro, cuda)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_bare_rank, args=(r, world, port, str(home), model, steps, batch, q), kwargs=kw)
             for r in range(world)]
    for p in procs:
        p.start()
    tps = q.get(timeout=1800)
    for p in procs:
        p.join()
    return tps


def ddp_rows(home: Path, size: str, steps: int, batch: int, reps: int = 1) -> dict:
    """cpt's 2-rank tokens/s over the bare loop's, `reps` times interleaved (bare, cpt, Ray Train +
    bare loop, bare, ...): each cpt run is compared with the faster of the bare runs on either side
    of it, and the median ratio is the result (this 2-core machine's speed drifts by 20% within
    minutes). The middle arm, the bare loop as a Ray Train group, splits the ratio in two: what
    Ray Train's presence costs (ray_bare / bare) and what cpt adds on top (cpt / ray_bare)."""
    model = SIZES[size]
    bare = [bare_ddp(home, model, steps, batch)]
    cpt, ray_bare, ratios, ray_ratios, loop_ratios = [], [], [], [], []
    for _ in range(reps):
        # two rounds: the second is the steady state of a persistent group (the first pays DDP's and
        # the allocator's first step, which the bare loop leaves out of its timing too)
        rs = cpt_rounds(home, spec(home, model, steps, 2, batch, workers=2, cpus=1), True)
        cpt.append(rs[1]["tokens_per_s"])
        ray_bare.append(ray_bare_ddp(home, model, steps, batch))
        bare.append(bare_ddp(home, model, steps, batch))
        base = max(bare[-2], bare[-1])
        ratios.append(cpt[-1] / base)
        ray_ratios.append(ray_bare[-1] / base)
        loop_ratios.append(cpt[-1] / ray_bare[-1])
        print(f"  DDP x2 {size}: cpt {cpt[-1]:,.0f} tok/s, Ray Train + bare loop {ray_bare[-1]:,.0f} tok/s, "
              f"bare {bare[-2]:,.0f} / {bare[-1]:,.0f} tok/s -> cpt/bare {ratios[-1]:.3f}, "
              f"ray/bare {ray_ratios[-1]:.3f}, cpt/ray {loop_ratios[-1]:.3f}", flush=True)
    row = {"model": size, "workers": 2, "steps": steps, "batch": batch, "reps": reps,
           "cpt_tokens_per_s": statistics.median(cpt), "bare_tokens_per_s": bare,
           "ray_bare_tokens_per_s": ray_bare, "ratio": statistics.median(ratios),
           "ray_bare_ratio": statistics.median(ray_ratios), "cpt_over_ray_bare": statistics.median(loop_ratios)}
    if reps > 1:
        row.update(cpt_runs=cpt, ratios=ratios, ray_bare_ratios=ray_ratios, cpt_over_ray_bare_runs=loop_ratios)
        print(f"  median of {reps}: cpt/bare {row['ratio']:.3f}, ray/bare {row['ray_bare_ratio']:.3f}, "
              f"cpt/ray {row['cpt_over_ray_bare']:.3f}", flush=True)
    return row


def contention_rows(home: Path, steps: int, batch: int, hogs: int = 2) -> list[dict]:
    """One rank (2 threads) of the 2M model, its second round alone and beside `hogs` busy loops
    at niceness 0 (started when the first round ends), with Ray's workers at niceness 15 (Ray's
    default) and at 0 (what cpt sets): how much of the machine a rank keeps under competition."""
    import subprocess

    from orchestrator import cluster
    from orchestrator.controller import SilentReporter

    class Load(SilentReporter):
        def __init__(self, on: bool):
            self.on, self.procs = on, []

        def round_finished(self, plan, result):
            if self.on and not self.procs:
                self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]

        def stop(self):
            for p in self.procs:
                p.kill()
                p.wait()

    rows = []
    for nice in (15, 0):
        cluster.shutdown()
        cluster.WORKER_NICENESS = nice
        cluster.connect(_home(home), num_cpus=2)
        row = {"worker_niceness": nice, "hogs": hogs}
        for loaded in (False, True):
            load = Load(loaded)
            try:
                rs = cpt_rounds(home, spec(home, SIZES["2M"], steps, 2, batch, workers=1, cpus=2), True, load)
            finally:
                load.stop()
            row["loaded" if loaded else "alone"] = rs[1]["tokens_per_s"]
        row["kept"] = row["loaded"] / row["alone"]
        print(f"  workers at niceness {nice:2d}: alone {row['alone']:,.0f} tok/s, beside {hogs} busy loops "
              f"{row['loaded']:,.0f} tok/s -> keeps {row['kept']:.2f}", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2M and 25M only, fewer steps (a smoke check)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    ap.add_argument("--only", choices=["overhead", "ddp", "contention"],
                    help="re-measure one part, keep the others from --out")
    ap.add_argument("--reps", type=int, default=1, help="DDP part: interleaved cpt/bare repetitions (median)")
    ap.add_argument("--worker-niceness", type=int, help="niceness of the Ray workers (default: what cpt sets, "
                    "0; Ray's own default is 15): for an A/B of that choice in one session")
    args = ap.parse_args()
    from corpus.builtin import prepare_builtins
    from orchestrator import cluster
    from orchestrator.home import Home

    home = Path(tempfile.mkdtemp(prefix="cpt-scale-", dir="/tmp"))
    shared = Home.from_env(ROOT / "cpt-home")  # reuse the demo's prepared data
    prepare_builtins(shared.data, shared.tokenizer, ["prose-en"], log=lambda m: None)
    (home / "data").mkdir()
    os.symlink(shared.data / "prose-en", home / "data" / "prose-en")
    os.symlink(shared.tokenizer, home / "tokenizer.json")
    if args.worker_niceness is not None:
        cluster.WORKER_NICENESS = args.worker_niceness
    cluster.connect(_home(home), num_cpus=2)
    niceness = cluster.WORKER_NICENESS  # of the overhead and DDP parts (the contention part sets its own)
    sizes = ["2M", "25M"] if args.quick else list(SIZES)
    t0 = time.time()
    old = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    overhead, ddp, contention = old.get("overhead"), old.get("ddp"), old.get("contention")
    if args.only in (None, "overhead"):
        print("per-round overhead, 1 rank x 2 CPUs, batch 4 x 128 tokens, 4 rounds of 4 steps:")
        overhead = overhead_rows(home, sizes, steps=2 if args.quick else 4, rounds=4, batch=4)
    if args.only in (None, "ddp"):
        print("two ranks (DDP, gloo, 1 thread each), global batch 16 x 128 tokens:")
        ddp = ddp_rows(home, "2M" if args.quick else "25M", steps=10 if args.quick else 20, batch=16,
                       reps=args.reps)
    if args.only in (None, "contention"):
        print("one rank beside busy loops, by Ray worker niceness (2M model, batch 16 x 128 tokens):")
        contention = contention_rows(home, steps=5 if args.quick else 10, batch=16)
    cluster.shutdown()
    result = {"date": str(date.today()), "machine": f"{platform.machine()} {os.cpu_count()} cpus, python "
              f"{platform.python_version()}", "quick": args.quick, "seconds": time.time() - t0,
              "worker_niceness": niceness,
              "overhead": overhead, "ddp": ddp, "contention": contention}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
