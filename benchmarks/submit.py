"""Submit to first step with a running cluster: what `cpt submit` adds over Ray Train itself.

With `cpt cluster up` running, one process launch -> first optimizer step finished, two ways,
alternating, in the same run:
  - cpt:  `cpt submit spec.yaml --quiet` (CLI import, spec + data checks, run store, MLflow run,
          Ray job, the mailbox actor, the Ray Train worker group, Fabric, restore-free first round);
          the first step's wall time is the round's step_times[0] as the rank recorded it;
  - bare: a plain driver that joins the same cluster and runs a `TorchTrainer` with 1 worker whose
          loop imports torch, builds the same model, opens the same data and takes one AdamW step.
The difference is cpt's overhead on the way to the first step (issue target: under 2 s); Ray
Train's own start (controller actor, placement group, worker process, torch import) is in both.

    python benchmarks/submit.py [--reps 3]     -> benchmarks/results/submit.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 352}


def spec_dict(home: Path) -> dict:
    return {"name": "submit", "seed": 0, "tokenizer": str(home / "tokenizer.json"), "seq_len": 128,
            "batch_size": 16, "model": MODEL, "domains": {"prose-en": str(home / "data" / "prose-en")},
            "stages": [{"name": "s", "domains": ["prose-en"], "tokens": 8 * 16 * 128, "rounds": 1,
                        "schedule": {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4, "warmup": 0.1}}],
            "eval_batches": 1, "resources": {"cpus": 1}}


def bare_loop(config: dict) -> None:
    """One Ray Train worker: the same model and data as the cpt run, one step, its time to a file."""
    import torch

    from corpus.sampler import RoundSampler, SequenceSource
    from corpus.tokenizer import load_tokenizer
    from workers.model import build_model, token_losses

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    home = Path(config["home"])
    vocab = load_tokenizer(home / "tokenizer.json").get_vocab_size()
    model = build_model(MODEL, vocab, 128, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    data = {"prose-en": SequenceSource.open("prose-en", str(home / "data" / "prose-en"), 128)}
    ids, _ = RoundSampler.fresh(data, {"prose-en": 1.0}, 16, 8).batch(0)
    token_losses(model, ids).mean().backward()
    opt.step()
    Path(config["out"]).write_text(str(time.time()))


def bare_child(home: Path, out: Path) -> None:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before `import ray`: stay on loopback, as cpt does
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    TorchTrainer(bare_loop, train_loop_config={"home": str(home), "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name=f"bare-{out.stem}", storage_path=str(home / "bare-storage")),
                 torch_config=TorchConfig(backend="gloo")).fit()


def time_bare(home: Path, env: dict, i: int) -> float:
    out = home / f"bare-{i}.txt"
    t0 = time.time()
    subprocess.run([sys.executable, __file__, "--bare-child", str(out), "--home", str(home)], env=env, check=True,
                   capture_output=True, cwd=ROOT, timeout=300)
    return float(out.read_text()) - t0


def time_cpt(home: Path, env: dict, spec: Path) -> dict:
    from store.runs import RunStore

    t0 = time.time()
    subprocess.run([sys.executable, "-m", "cli.main", "submit", str(spec), "--quiet"], env=env, check=True,
                   capture_output=True, cwd=ROOT, timeout=300)
    store = RunStore(f"sqlite:///{home / 'store.db'}", migrate=False)
    run = store.list_runs(1)[0]
    (rnd,) = store.rounds(run.id, status="finished")
    res = rnd.result
    return {"first_step_s": res.step_times[0] - t0, "round_started_s": res.started_at - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bare-child")
    ap.add_argument("--home")
    args = ap.parse_args()
    if args.bare_child:
        return bare_child(Path(args.home), Path(args.bare_child))
    from corpus.builtin import prepare_builtins
    from orchestrator import local_cluster
    from orchestrator.home import Home

    home = Path(tempfile.mkdtemp(prefix="cpt-bench-submit-", dir="/tmp"))
    shared = Home.from_env(ROOT / "cpt-home")  # the demo's prepared data (prepared here as `make demo` does)
    prepare_builtins(shared.data, shared.tokenizer, None, install=True, log=lambda m: None)
    (home / "data").mkdir()
    os.symlink(shared.data / "prose-en", home / "data" / "prose-en")
    os.symlink(shared.tokenizer, home / "tokenizer.json")
    spec = home / "submit.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(home)))
    h = Home.from_env(home)
    local_cluster.up(h, num_cpus=2)
    env = {**os.environ, "CPT_HOME": str(home), "PYTHONPATH": str(ROOT), **local_cluster.join_env(home)}
    cpt_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}  # cpt finds the cluster in CPT_HOME itself
    try:
        time_bare(home, env, -1)  # warm the OS file cache for both sides (imports, data)
        bare, cpt = [], []
        for i in range(args.reps):
            bare.append(time_bare(home, env, i))
            cpt.append(time_cpt(home, cpt_env, spec))
            print(f"rep {i}: bare {bare[-1]:.2f} s, cpt {cpt[-1]['first_step_s']:.2f} s", flush=True)
    finally:
        local_cluster.down(h)
    b = statistics.median(bare)
    c = statistics.median(x["first_step_s"] for x in cpt)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, {date.today()}")
    print(f"| measure (median of {args.reps}) | value |\n|---|---|")
    print(f"| bare Ray Train driver, launch -> first step | {b:.2f} s |")
    print(f"| `cpt submit`, launch -> first step | {c:.2f} s |")
    print(f"| cpt overhead to the first step | {c - b:.2f} s |")
    print(f"| ratio cpt / bare | {c / b:.2f} |")
    out = ROOT / "benchmarks" / "results" / "submit.json"
    out.write_text(json.dumps({"date": str(date.today()), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                               "bare_first_step_s": bare, "cpt": cpt, "bare_median_s": b, "cpt_median_s": c,
                               "overhead_s": c - b, "ratio": c / b}, indent=1))


if __name__ == "__main__":
    main()
