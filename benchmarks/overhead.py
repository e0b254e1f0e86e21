"""Overhead of running steps through cpt (Ray Train group + Fabric + run store + MLflow) vs a bare PyTorch loop.

Same model, same data (the built-in prose-en domain, same sampler), same number of steps, same
thread count, all measured in one process run. Reports:
  - ratio: cpt wall time / bare-loop wall time for the same steps (1 round),
  - fixed per-round overhead: (T(R rounds) - T(1 round)) / (R - 1),
  - steady-state throughput ratio: the worker's fit-only tokens/s vs the bare loop's.

    python benchmarks/overhead.py [--steps 120] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def spec_dict(home: Path, steps: int, rounds: int, cpus: int) -> dict:
    return {
        "name": f"overhead-r{rounds}", "seed": 0, "tokenizer": str(home / "tokenizer.json"),
        "seq_len": 128, "batch_size": 16,
        "model": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 352},
        "domains": {"prose-en": str(home / "data" / "prose-en")},
        "stages": [{"name": "s", "domains": ["prose-en"], "tokens": steps * 16 * 128, "rounds": rounds,
                    "schedule": {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4, "warmup": 0.02}}],
        "eval_batches": 1, "resources": {"cpus": cpus},
    }


def bare_loop(home: Path, steps: int, threads: int) -> tuple[float, float]:
    """The same training as one cpt round, as a plain PyTorch loop. Returns (wall s, tokens/s)."""
    import torch

    from corpus.sampler import RoundSampler, SequenceSource
    from corpus.tokenizer import load_tokenizer
    from store.schedules import Cosine
    from workers.model import build_model, token_losses

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    vocab = load_tokenizer(home / "tokenizer.json").get_vocab_size()
    spec = spec_dict(home, steps, 1, threads)
    model = build_model(spec["model"], vocab, 128, 0)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95))
    data = {"prose-en": SequenceSource.open("prose-en", str(home / "data" / "prose-en"), 128)}
    sampler = RoundSampler.fresh(data, {"prose-en": 1.0}, 16, steps)
    sched = Cosine(peak_lr=3e-3, min_lr=3e-4, warmup=0.02)
    t_fit = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = sched.lr(step, steps)
        ids, _ = sampler.batch(step)
        loss = token_losses(model, ids).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
    fit = time.perf_counter() - t_fit
    return time.perf_counter() - t0, steps * 16 * 128 / fit


def cpt_run(home: Path, steps: int, rounds: int, cpus: int) -> tuple[float, list[float], float]:
    """Wall time of a whole run (controller side), each round's fit tokens/s, and the summed fit time."""
    from orchestrator.controller import Controller
    from orchestrator.home import Home
    from orchestrator.spec import parse_spec
    from orchestrator.submit import create_run
    from store.runs import RunStore

    h = Home.from_env(home)
    store = RunStore(h.store_url)
    text = yaml.safe_dump(spec_dict(home, steps, rounds, cpus))
    t0 = time.perf_counter()
    run_id = create_run(store, h, parse_spec(text), text)
    Controller(store, h, run_id).run()
    wall = time.perf_counter() - t0
    done = store.rounds(run_id, status="finished")
    return wall, [r.tokens_per_s for r in done], sum(r.tokens / r.tokens_per_s for r in done)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    from corpus.builtin import prepare_builtins
    from orchestrator import cluster
    from orchestrator.home import Home

    home = Path(tempfile.mkdtemp(prefix="cpt-bench-", dir="/tmp"))
    shared = Home.from_env(ROOT / "cpt-home")  # reuse the demo's prepared data
    prepare_builtins(shared.data, shared.tokenizer, ["prose-en"], log=lambda m: None)
    (home / "data").mkdir()
    os.symlink(shared.data / "prose-en", home / "data" / "prose-en")
    os.symlink(shared.tokenizer, home / "tokenizer.json")

    # bare runs before and after the cpt runs: the min of the two is the baseline (machine noise)
    bare1 = bare_loop(home, args.steps, args.cpus)
    one_wall, one_tps, _ = cpt_run(home, args.steps, 1, args.cpus)  # includes starting Ray
    one_warm, _, one_fit = cpt_run(home, args.steps, 1, args.cpus)  # Ray already up
    many_wall, _, many_fit = cpt_run(home, args.steps, args.rounds, args.cpus)
    cluster.shutdown()
    bare2 = bare_loop(home, args.steps, args.cpus)
    bare_wall, bare_tps = min(bare1[0], bare2[0]), max(bare1[1], bare2[1])
    print(f"bare runs: {bare1[0]:.1f} s, {bare2[0]:.1f} s")
    # overhead = wall time not spent in the ranks' step loop; fit speed noise cancels out
    over1, over_many = one_warm - one_fit, many_wall - many_fit
    per_round = (over_many - over1) / (args.rounds - 1)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, {date.today()}")
    print(f"steps={args.steps} x 2048 tokens, threads={args.cpus}")
    print("| measure | value |\n|---|---|")
    print(f"| bare loop wall | {bare_wall:.1f} s |")
    print(f"| cpt 1 round wall (incl. Ray and group start) | {one_wall:.1f} s |")
    print(f"| cpt 1 round wall (Ray running, group started) | {one_warm:.1f} s |")
    print(f"| cpt {args.rounds} rounds wall (Ray running) | {many_wall:.1f} s |")
    print(f"| ratio cpt/bare, 1 round, Ray running | {one_warm / bare_wall:.2f} |")
    print(f"| non-fit time, 1 round / {args.rounds} rounds | {over1:.1f} s / {over_many:.1f} s |")
    print(f"| fixed overhead per round (plan hand-off, eval, checkpoint, store, MLflow) | {per_round:.2f} s |")
    print(f"| fixed overhead per run (Ray running; starts the worker group) | {over1 - per_round:.2f} s |")
    print(f"| steady-state tokens/s, worker (Fabric rank) / bare | {one_tps[0] / bare_tps:.3f} |")
    import json

    out = ROOT / "benchmarks" / "results" / "overhead.json"
    out.write_text(json.dumps({"date": str(date.today()), "steps": args.steps, "rounds": args.rounds,
                               "threads": args.cpus, "bare_wall_s": [bare1[0], bare2[0]],
                               "bare_tokens_per_s": [bare1[1], bare2[1]], "cpt_one_round_cold_s": one_wall,
                               "cpt_one_round_warm_s": one_warm, "cpt_rounds_wall_s": many_wall,
                               "non_fit_one_s": over1, "non_fit_rounds_s": over_many, "per_round_s": per_round,
                               "per_run_s": over1 - per_round, "worker_over_bare_tps": one_tps[0] / bare_tps},
                              indent=1))


if __name__ == "__main__":
    main()
