"""GPU throughput, MFU, memory and correctness of cpt's rank on one GPU (run by gpu.sh).

Cases run in a fixed priority order under a time budget (`--budget-s`; a lent GPU machine comes for
minutes): each case's numbers are written to the JSON at once (and to $OUT/gpu.json where $OUT is
set), so a run cut short keeps what it measured; `--cases` picks cases by name to finish later.

- `bare-*`: a plain PyTorch loop in this process on the same model, data (the built-in code-py
  domain, same sampler), global batch, micro-batches, AdamW, clipping and bf16 autocast as cpt's
  rank (the model prepared by the same `prepare_model`: compile, activation checkpointing);
- `cpt-*`: one cpt run (controller, Ray Train group of one rank, Fabric: `single` device or `fsdp`),
  one round; its steady tokens/s is read between the round's first and last logged steps (their
  timestamps are taken after a device sync), as the bare loop's is after its warm-up steps;
- `bf16-vs-fp32`: the bare loop's first steps in fp32 (no TF32) and bf16-mixed on the same batches;
- `resume`: a 3-round cpt run, and the same run cancelled after round 0 and resumed from its
  checkpoint: per-step train losses compared (eval and sharded asynchronous checkpoints on the GPU).

MFU = 6 x parameters x tokens/s / the GPU's dense bf16 peak (workers/runner.py). `--cpu-smoke`
rehearses every case on CPU with a tiny model (numbers meaningless): run it before spending a lent
machine's minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {  # Llama-style; the built-in tokenizer's vocabulary is 4096, so nearly all parameters are blocks
    "125M": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 2816},
    "1B": {"hidden_size": 2048, "num_layers": 21, "num_heads": 16, "num_kv_heads": 8, "intermediate_size": 5632},
    "8B": {"hidden_size": 4096, "num_layers": 32, "num_heads": 32, "num_kv_heads": 8, "intermediate_size": 14336},
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128},
}
MICRO = {"125M": 16, "1B": 16, "8B": 4, "tiny": 2}  # sequences per micro-batch; two micro-batches a step
SEQ, DOMAIN, LR = 1024, "code-py", 3e-4
# (name, kind, model, strategy, compile, activation checkpointing, rough seconds on an H200): priority order
CASES = [
    ("bf16-vs-fp32", "precision", "125M", None, False, False, 15),
    ("bare-125M", "bare", "125M", None, False, False, 10),
    ("cpt-125M", "cpt", "125M", "single", False, False, 40),
    ("bare-1B-compile", "bare", "1B", None, True, False, 70),
    ("cpt-1B-compile", "cpt", "1B", "single", True, False, 130),
    ("bare-1B", "bare", "1B", None, False, False, 15),
    ("cpt-1B", "cpt", "1B", "single", False, False, 75),
    ("cpt-1B-fsdp", "cpt", "1B", "fsdp", False, False, 60),
    ("resume", "resume", "125M", "single", False, False, 100),
    ("bare-1B-ac", "bare", "1B", None, False, True, 20),
    ("cpt-1B-ac", "cpt", "1B", "single", False, True, 75),
    ("bare-1B-compile-ac", "bare", "1B", None, True, True, 50),
    ("cpt-1B-compile-ac", "cpt", "1B", "single", True, True, 130),
    ("bare-125M-compile", "bare", "125M", None, True, False, 40),
    ("cpt-125M-compile", "cpt", "125M", "single", True, False, 60),
    ("cpt-125M-fsdp", "cpt", "125M", "fsdp", False, False, 40),
    ("bare-8B-ac", "bare", "8B", None, False, True, 90),
    ("cpt-8B-ac", "cpt", "8B", "single", False, True, 120),
]


def _params(model: dict, vocab: int) -> int:
    """Parameters of a Llama-style model with untied embeddings (what build_model makes)."""
    h, f, n = model["hidden_size"], model["intermediate_size"], model["num_layers"]
    kv = model.get("num_kv_heads") or model["num_heads"]
    attn = 2 * h * h + 2 * h * (h // model["num_heads"]) * kv
    return n * (attn + 3 * h * f + 2 * h) + 2 * vocab * h + h


def _matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def bare(home, model: dict, steps: int, warm: int, micro: int, seq: int, device: str, precision: str,
         compile: bool, ac: bool) -> dict:
    """The bare loop: tokens/s over `steps` steps after `warm`, peak memory, per-step losses."""
    import torch

    from corpus.sampler import RoundSampler, SequenceSource
    from store.configs import OptimizerConfig, Resources
    from workers.fabric import make_optimizer, prepare_model
    from workers.model import build_model, token_losses

    cuda = device.startswith("cuda")
    batch = 2 * micro
    data = {DOMAIN: SequenceSource.open(DOMAIN, str(home.data / DOMAIN), seq)}
    vocab = data[DOMAIN].data.manifest["vocab_size"]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    net = build_model(model, vocab, seq, 0, device)
    prepare_model(net, Resources(compile=compile, activation_checkpointing=ac, precision=precision,
                                 gpus_per_worker=1 if cuda else 0))
    opt = make_optimizer(net, OptimizerConfig())
    for g in opt.param_groups:
        g["lr"] = LR
    sampler = RoundSampler.fresh(data, {DOMAIN: 1.0}, batch, warm + steps)
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    losses = torch.zeros(warm + steps, dtype=torch.float64, device=device)
    net.train()
    t0 = time.perf_counter()
    for step in range(warm + steps):
        if step == warm:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        ids, _ = sampler.batch(step, 0, 1)
        ids = ids.to(device, non_blocking=True)
        for m in range(0, batch, micro):
            with autocast:
                per_seq = token_losses(net, ids[m:m + micro])
            (per_seq.sum() / batch).backward()
            losses[step] += per_seq.detach().double().sum() / batch
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    tps = steps * batch * seq / (time.perf_counter() - t0)
    out = {"tokens_per_s": tps, "losses": losses.tolist(), "params": sum(p.numel() for p in net.parameters()),
           "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}
    del net, opt
    if compile:
        torch._dynamo.reset()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def _spec(home, model: dict, strategy: str, compile: bool, ac: bool, steps: int, rounds: int, micro: int,
          seq: int, cuda: bool) -> dict:
    batch = 2 * micro
    res = {"workers": 1, "strategy": "fsdp" if strategy == "fsdp" else "ddp", "compile": compile,
           "activation_checkpointing": ac}
    res.update({"gpus_per_worker": 1, "cpus_per_worker": 8, "precision": "bf16-mixed"} if cuda
               else {"cpus_per_worker": 1})
    return {"name": "gpu", "seed": 0, "tokenizer": str(home.tokenizer), "seq_len": seq, "batch_size": batch,
            "micro_batch_size": micro, "model": model,
            "domains": {DOMAIN: str(home.data / DOMAIN)}, "tracking": {"log_every": 4},
            "stages": [{"name": "s", "domains": [DOMAIN], "tokens": steps * rounds * batch * seq, "rounds": rounds,
                        "schedule": {"kind": "constant", "peak_lr": LR}}],
            # a 1B checkpoint with AdamW state is ~12 GB and the machine's disk 64 GiB: keep one
            "checkpoints": {"keep_last": 1, "keep_stage_ends": False}, "eval_batches": 1, "resources": res}


def cpt(home, raw: dict, stop_after: int | None = None, run_id: str | None = None,
        groups=None) -> tuple[str, str, list]:
    """Run (or resume) a cpt run; returns (run id, final status, finished rounds' results)."""
    import yaml

    from orchestrator.callbacks import SilentReporter
    from orchestrator.controller import Controller
    from orchestrator.spec import parse_spec
    from orchestrator.submit import create_run
    from store.runs import RunStore

    store = RunStore(home.store_url)

    class StopAfter(SilentReporter):
        def round_finished(self, plan, result):
            if plan.round_index == stop_after:
                store.request_cancel(run_id)

    if run_id is None:
        text = yaml.safe_dump(raw)
        run_id = create_run(store, home, parse_spec(text), text)
    status = Controller(store, home, run_id, StopAfter() if stop_after is not None else None,
                        tracking=False, poll_s=0.05, groups=groups).run()
    return run_id, status, [r.result for r in store.rounds(run_id, status="finished")]


def _steady(result, batch: int, seq: int, every: int = 4) -> float:
    """Tokens/s between the round's first and last logged steps (timestamps taken after a sync)."""
    steps = len(result.step_times)
    logged = [k for k in range(steps) if k % every == every - 1 or k == steps - 1]
    k1, k2 = logged[0], logged[-1]
    return (k2 - k1) * batch * seq / (result.step_times[k2] - result.step_times[k1])


def run_case(case: tuple, home, args, device: str, device_name: str) -> dict:
    import shutil

    from store.runs import RunStore
    from workers.runner import mfu

    name, kind, size, strategy, compile, ac, _ = case
    model, micro = MODELS[size], MICRO[size]
    cuda = device.startswith("cuda")
    seq = SEQ if cuda else 64
    if not cuda:
        model, micro = MODELS["tiny"], MICRO["tiny"]
    model = {**model, "tie_embeddings": False}  # cpt's run and the bare loop build the same model
    row = {"case": name, "model": size, "compile": compile, "activation_checkpointing": ac}
    if kind == "precision":
        steps = args.precision_steps
        b16 = bare(home, model, steps, 0, micro, seq, device, "bf16-mixed" if cuda else "32-true", False, False)
        f32 = bare(home, model, steps, 0, micro, seq, device, "32-true", False, False)
        rel = [abs(a - b) / abs(b) for a, b in zip(b16["losses"], f32["losses"], strict=True)]
        return {**row, "bf16_losses": b16["losses"], "fp32_losses": f32["losses"], "max_rel_diff": max(rel),
                "tolerance": args.bf16_tolerance, "ok": max(rel) <= args.bf16_tolerance}
    if kind == "bare":
        warm = 3 if compile else 2
        out = bare(home, model, args.steps, warm, micro, seq, device, "bf16-mixed" if cuda else "32-true",
                   compile, ac)
        return {**row, "strategy": "bare", "model_params": out["params"], "tokens_per_s": out["tokens_per_s"],
                "mfu": mfu(out["params"], out["tokens_per_s"], device_name), "peak_mem_gb": out["peak_mem_gb"],
                "losses": out["losses"]}
    if kind == "cpt":
        raw = _spec(home, model, strategy, compile, ac, args.steps + 4, 1, micro, seq, cuda)
        run_id, status, results = cpt(home, raw)
        assert status == "finished", f"{name}: run ended {status}"
        r = results[0]
        tps = _steady(r, 2 * micro, seq)
        params = _params(model, json.loads((home.data / DOMAIN / "manifest.json").read_text())["vocab_size"])
        shutil.rmtree(RunStore(home.store_url).get_run(run_id).workdir, ignore_errors=True)
        return {**row, "strategy": strategy, "model_params": params, "tokens_per_s": tps,
                "mfu": mfu(params, tps, device_name), "round_mfu": r.mfu, "peak_mem_gb": r.peak_mem_gb,
                "fit_s": r.fit_s, "eval_s": r.eval_s, "round_s": r.round_s,
                "checkpoint_stall_s": r.checkpoint_stall_s, "checkpoint_write_s": r.checkpoint_write_s,
                "eval_losses": r.eval_losses, "losses": r.train_losses}
    if kind == "resume":
        from orchestrator.group import SharedGroups

        raw = _spec(home, model, strategy, compile, ac, 4, 3, micro, seq, cuda)
        groups = SharedGroups()  # one group for the reference and the stopped run
        try:
            _, status, ref = cpt(home, raw, groups=groups)
            assert status == "finished", f"resume: the reference run ended {status}"
            run_id, status, _ = cpt(home, raw, stop_after=0, groups=groups)
            assert status == "cancelled", f"resume: the stopped run ended {status}"
        finally:
            groups.close()
        _, status, got = cpt(home, raw, run_id=run_id)  # a new group: it can only restore from the checkpoint
        assert status == "finished", f"resume: the resumed run ended {status}"
        a = [x for r in ref for x in r.train_losses]
        b = [x for r in got for x in r.train_losses]
        rel = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
        ev = max(abs(ref[-1].eval_losses[d] - got[-1].eval_losses[d]) / ref[-1].eval_losses[d]
                 for d in ref[-1].eval_losses)
        return {**row, "steps": len(a), "ref_losses": a, "resumed_losses": b, "max_rel_diff": rel,
                "eval_max_rel_diff": ev, "tolerance": args.bf16_tolerance,
                "ok": len(a) == len(b) and max(rel, ev) <= args.bf16_tolerance,
                "checkpoint_stall_s": [r.checkpoint_stall_s for r in got],
                "checkpoint_write_s": [r.checkpoint_write_s for r in got]}
    raise ValueError(kind)


def table(cases: list[dict]) -> list[dict]:
    """The issue's rows: each cpt case beside the bare loop with the same model, compile and AC."""
    bare_of = {(c["model"], c["compile"], c["activation_checkpointing"]): c for c in cases
               if c.get("strategy") == "bare" and "error" not in c}
    rows = []
    for c in cases:
        if "tokens_per_s" not in c:
            continue
        b = bare_of.get((c["model"], c["compile"], c["activation_checkpointing"]))
        rows.append({"model_params": c["model_params"], "strategy": c["strategy"], "precision": "bf16-mixed",
                     "compile": c["compile"], "activation_checkpointing": c["activation_checkpointing"],
                     "tokens_per_s": c["tokens_per_s"], "mfu": c["mfu"],
                     "bare_tokens_per_s": b["tokens_per_s"] if b else None,
                     "cpt_vs_bare": c["tokens_per_s"] / b["tokens_per_s"] if b and c["strategy"] != "bare" else None,
                     "peak_mem_gb": c["peak_mem_gb"]})
    return rows


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all, in priority order)")
    ap.add_argument("--budget-s", type=float, default=400, help="start no case expected to end past this")
    ap.add_argument("--steps", type=int, default=16, help="timed steps per case")
    ap.add_argument("--precision-steps", type=int, default=8)
    ap.add_argument("--bf16-tolerance", type=float, default=0.01, help="max relative loss difference")
    ap.add_argument("--home", type=Path, default=None, help="a prepared CPT_HOME (tokenizer, data/code-py)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="rehearse every case on CPU (see the docstring)")
    args = ap.parse_args()
    t_start = time.time()
    cuda = not args.cpu_smoke
    if args.cpu_smoke:
        args.steps, args.precision_steps = 3, 2
        args.out = args.out.with_name("gpu-cpu-smoke.json") if args.out.name == "gpu.json" else args.out
    elif not torch.cuda.is_available():
        sys.exit("gpu.py: no CUDA device visible")
    device = "cuda:0" if cuda else "cpu"
    device_name = torch.cuda.get_device_name(0) if cuda else "CPU (--cpu-smoke)"
    from corpus.builtin import prepare_builtins
    from orchestrator import cluster
    from orchestrator.home import Home

    root = (args.home or Path(tempfile.mkdtemp(prefix="cpt-gpu-"))).resolve()
    home = Home(root, f"sqlite:///{root / 'store.db'}")
    if not (home.data / DOMAIN).exists():
        prepare_builtins(home.data, home.tokenizer, [DOMAIN], install=False, log=print)
    cluster.connect(home, num_cpus=None if cuda else 2, dashboard=False)  # a benchmark: nobody watches it
    if cuda:  # the chip's attainable bf16 matmul rate here, beside the datasheet peak MFU is taken over
        out_ceiling = _matmul_tflops()
        print(f"bf16 8192^3 matmul: {out_ceiling:.0f} TFLOP/s", flush=True)
    wanted = [c for c in CASES if (not args.cases or c[0] in args.cases.split(","))
              and (cuda or c[3] != "fsdp")]  # Lightning Fabric's FSDP is GPU-only
    out = {"date": str(date.today()), "machine": f"{platform.node()} {device_name}",
           "torch": torch.__version__, "python": platform.python_version(),
           "matmul_bf16_tflops": out_ceiling if cuda else None, "cases": [], "rows": []}
    for case in wanted:
        spent = time.time() - t_start
        if cuda and spent + case[-1] > args.budget_s:
            print(f"[{spent:5.0f}s] {case[0]}: skipped (about {case[-1]} s; budget {args.budget_s:.0f} s)", flush=True)
            out["cases"].append({"case": case[0], "skipped": True})
            continue
        t0 = time.time()
        try:
            res = run_case(case, home, args, device, device_name)
        except Exception as exc:  # one case's failure is a finding: record it and go on
            res = {"case": case[0], "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc()[-4000:]}
            print(res["traceback"], flush=True)
        res["seconds"] = time.time() - t0
        out["cases"].append(res)
        out["rows"] = table(out["cases"])
        out["seconds"] = time.time() - t_start
        brief = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()
                 if k in ("tokens_per_s", "mfu", "peak_mem_gb", "max_rel_diff", "eval_max_rel_diff", "ok",
                          "error", "checkpoint_stall_s", "checkpoint_write_s", "eval_s", "seconds")}
        print(f"[{time.time() - t_start:5.0f}s] {case[0]}: {brief}", flush=True)
        for target in [args.out] + ([Path(os.environ["OUT"]) / args.out.name] if os.environ.get("OUT") else []):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(out, indent=1))
    cluster.shutdown()
    print(f"{'params':>14} {'strategy':>8} {'compile':>7} {'AC':>5} {'tok/s':>10} {'MFU':>6} {'bare':>10} "
          f"{'cpt/bare':>8} {'peak GB':>7}")
    for r in out["rows"]:
        f = lambda v, p: "-" if v is None else format(v, p)  # noqa: E731
        print(f"{r['model_params']:>14,} {r['strategy']:>8} {r['compile']!s:>7} {r['activation_checkpointing']!s:>5} "
              f"{r['tokens_per_s']:>10,.0f} {f(r['mfu'], '.1%'):>6} {f(r['bare_tokens_per_s'], ',.0f'):>10} "
              f"{f(r['cpt_vs_bare'], '.3f'):>8} {f(r['peak_mem_gb'], '.1f'):>7}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
