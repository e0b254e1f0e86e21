"""Every mixer on one two-domain continual run at equal tokens: source kept, target learned.

Setup: a stage-1 model trained on English prose (source); stage 2 learns German prose (target)
from that checkpoint with 6 rounds, and the mixer picks the weights of [target, source] each round.
Reported: final validation loss per domain and the balanced score
    balanced = -1/2 (relative change of the source loss + relative change of the target loss)
measured from the stage-1 checkpoint (higher is better; the Data Mixing Agent's objective).

Every mixer runs with several seeds (the seed sets the stage-1 model's init and both stages' data
order; stage 2 of seed s continues seed s's stage-1 model); reported per mixer: mean and standard
deviation of the balanced score and of each domain's final loss, and the paired difference to the
best baseline on the same seeds (mean and standard deviation of the per-seed differences).

The agent is trained on different data and seeds than it is evaluated on: exploration trajectories
use a smaller proxy model, German *technical* text (manual pages) as the target, and other seeds.

    python benchmarks/mixers.py [--tokens 300000] [--trajectories 12] [--seeds 3]
    python benchmarks/mixers.py --quick     # smoke check: fewer tokens, seeds and mixers (< 15 min)
Raw results: benchmarks/results/mixers.json (mixers-quick.json for --quick), one row per mixer
and evaluation pair: {"rows": [{"pair", "mixer", "seeds", "balanced_mean", "balanced_std", ...}]}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/mixers.py would shadow the `mixers` package: keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
SRC, TGT, PROXY_TGT = "prose-en", "prose-de", "tech-de"
COSINE = {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4, "warmup": 0.02}


def spec(name, root: Path, stages, model=None, seed=0, path=None, domains=(SRC, TGT)) -> dict:
    model = dict(model or {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 352})
    model["path"] = path
    return {"name": name, "seed": seed, "tokenizer": str(root / "tokenizer.json"), "seq_len": 128,
            "batch_size": 16, "model": model, "domains": {d: str(root / "data" / d) for d in domains},
            "stages": stages, "eval_batches": 8, "resources": {"cpus": 1}, "tracking": {"experiment": "cpt-mixers"}}


def stage2(tokens: int, mixer: dict, replay: float = 0.25, target: str = TGT, **extra) -> list[dict]:
    from mixers.base import build_mixer

    # replay.fraction only where the mixer reads it (the others set the replay share themselves)
    fraction = replay if build_mixer(mixer).reads_replay_fraction() else 0.0
    return [{"name": "continue", "domains": [target], "tokens": tokens, "rounds": 6, "schedule": COSINE,
             "replay": {"fraction": fraction, "sources": [SRC]}, "mixer": mixer, **extra}]


def run(store, home, raw: dict) -> str:
    from orchestrator.controller import Controller, create_run
    from orchestrator.spec import parse_spec

    for existing in store.list_runs(10_000):  # re-running the script reuses finished runs of the same spec
        if existing.name == raw["name"] and existing.status == "finished" and yaml.safe_load(existing.spec_yaml) == raw:
            print(f"  {raw['name']}: reused {existing.id}", flush=True)
            return existing.id
    text = yaml.safe_dump(raw)
    rid = create_run(store, home, parse_spec(text), text)
    t0 = time.perf_counter()
    Controller(store, home, rid, tracking=False).run()
    print(f"  {raw['name']}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rid


def scores(store, rid: str) -> dict:
    done = store.rounds(rid, status="finished")
    before = json.loads(done[0].result_json)["eval_before"]
    after = done[-1].eval_losses
    rel = {d: (after[d] - before[d]) / before[d] for d in (SRC, TGT)}
    weights = [r.weights for r in done]
    return {"src": after[SRC], "tgt": after[TGT], "balanced": -0.5 * (rel[SRC] + rel[TGT]),
            "src_share": sum(w.get(SRC, 0) for w in weights) / len(weights)}


def _stats(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=300_000, help="tokens of stage 1 and of stage 2")
    ap.add_argument("--trajectories", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3, help="evaluation seeds per mixer (paired across mixers)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke check: 60k tokens, 2 seeds, 4 trajectories, 5 mixers; results/mixers-quick.json")
    ap.add_argument("--home", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.seeds, args.trajectories = 60_000, 2, 4
    args.home = args.home or ROOT / "cpt-home" / ("mixers-quick" if args.quick else "mixers")
    from corpus.builtin import prepare_builtins
    from mixers.agent import save_agent, train_agent
    from orchestrator import cluster
    from orchestrator.explore import explore
    from orchestrator.home import Home
    from orchestrator.spec import parse_spec
    from store.runs import RunStore

    home = Home.from_env(args.home)
    prepare_builtins(home.data, home.tokenizer, [SRC, TGT, PROXY_TGT], install=True, log=lambda m: print(" ", m))
    store = RunStore(home.store_url)
    cluster.connect(home)
    T, root = args.tokens, home.root
    machine = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, {date.today()}"
    print(f"machine: {machine}; {T:,} tokens per stage, {args.seeds} seed(s)", flush=True)
    t_start = time.perf_counter()

    # 1. the agent: proxy stage 1, random-mixture trajectories on other data/seeds, offline AWR
    proxy = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 176}
    p1 = run(store, home, spec("proxy-pretrain", root, [{"name": "en", "domains": [SRC], "tokens": T // 2,
                                                          "rounds": 1, "schedule": COSINE}], proxy, seed=100,
                               domains=(SRC, PROXY_TGT)))
    proxy_ckpt = store.rounds(p1, status="finished")[-1].checkpoint_uri
    explore_spec = spec("proxy", root, stage2(T // 2, {"kind": "fixed_replay"}, target=PROXY_TGT), proxy,
                        seed=200, path=proxy_ckpt, domains=(SRC, PROXY_TGT))
    t0 = time.perf_counter()
    explored = [r.id for r in store.list_runs(10_000) if r.name.startswith("proxy-explore") and r.status == "finished"]
    if len(explored) < args.trajectories:
        status = explore(store, home, parse_spec(yaml.safe_dump(explore_spec)), args.trajectories, 1.0, parallel=2)
        explored = [rid for rid, s in status.items() if s == "finished"]
    print(f"  explore: {len(explored)} trajectories, {time.perf_counter() - t0:.0f} s", flush=True)
    # only exploration transitions: evaluation runs below also store theirs, and must not leak in
    policy, meta = train_agent([t for t in store.transitions(num_domains=2) if t.run_id in set(explored)], 2)
    agent_path = save_agent(policy, root / "agent.safetensors", meta)
    print(f"  agent: {meta['transitions']} transitions, {meta['trajectories']} trajectories", flush=True)

    # 2. the evaluation: per seed one stage-1 model, every mixer continues it with the same tokens
    mixers = {
        "fixed_replay 5%": ({"kind": "fixed_replay"}, 0.05, {}),
        "fixed_replay 25%": ({"kind": "fixed_replay"}, 0.25, {}),
        "static 50/50": ({"kind": "static", "weights": {TGT: 0.5, SRC: 0.5}}, 0.0, {}),
        "proportional (pooled by tokens)": ({"kind": "proportional", "pool": True}, 0.0, {}),
        "temperature tau=2 (pooled)": ({"kind": "temperature", "temperature": 2.0, "pool": True}, 0.0, {}),
        "odm (EXP3)": ({"kind": "odm"}, 0.0, {}),
        "recap": ({"kind": "recap", "window": 10, "temperature": 0.05}, 0.0, {}),
        "agent (AWR)": ({"kind": "agent", "path": str(agent_path)}, 0.0, {}),
        "fixed_replay 25% + LinUpper samples": ({"kind": "fixed_replay"}, 0.25,
                                                {"sample_loss": {"kind": "linupper", "r": 0.4}}),
    }
    if args.quick:
        mixers = {k: v for k, v in mixers.items() if k in ("fixed_replay 25%", "static 50/50", "odm (EXP3)",
                                                            "agent (AWR)")}
    per_seed: dict[str, dict[int, dict]] = {}
    for seed in range(args.seeds):
        sfx = f"-s{seed}" if seed else ""  # seed 0 keeps the single-seed run names (reused)
        s1 = run(store, home, spec(f"pretrain{sfx}", root, [{"name": "en", "domains": [SRC], "tokens": T,
                                                             "rounds": 2, "schedule": COSINE}], seed=seed,
                                   domains=(SRC, TGT)))
        ckpt = store.rounds(s1, status="finished")[-1].checkpoint_uri
        runs = {}
        for label, (mixer, replay, extra) in mixers.items():
            slug = label.split()[0].replace("/", "-")
            runs[label] = run(store, home, spec(f"mix-{slug}{sfx}", root, stage2(T, mixer, replay, **extra),
                                                seed=seed, path=ckpt))
        # DoReMi's reference model: the uniform (static 50/50) run's final losses, same seed
        runs["doremi (ref = 50/50 run)"] = run(store, home, spec(
            f"mix-doremi{sfx}", root, stage2(T, {"kind": "doremi", "reference_run": runs["static 50/50"],
                                                 "smoothing": 0.05}, 0.0), seed=seed, path=ckpt))
        for label, rid in runs.items():
            per_seed.setdefault(label, {})[seed] = scores(store, rid)
    cluster.shutdown()

    rows = []
    for label, by_seed in per_seed.items():
        row = {"pair": f"{SRC}->{TGT}", "mixer": label, "seeds": len(by_seed)}
        for key, name in (("balanced", "balanced"), ("src", "source_loss"), ("tgt", "target_loss"),
                          ("src_share", "source_weight")):
            row[f"{name}_mean"], row[f"{name}_std"] = _stats([s[key] for s in by_seed.values()])
        row["per_seed_balanced"] = [by_seed[k]["balanced"] for k in sorted(by_seed)]
        rows.append(row)
    baselines = [r for r in rows if not r["mixer"].startswith("agent")]
    best = max(baselines, key=lambda r: r["balanced_mean"])
    for r in rows:  # paired on seeds: the same stage-1 model and data order on both sides
        diffs = [a - b for a, b in zip(r["per_seed_balanced"], best["per_seed_balanced"], strict=True)]
        r["vs_best_baseline"], (r["vs_best_mean"], r["vs_best_std"]) = best["mixer"], _stats(diffs)
    rows.sort(key=lambda r: -r["balanced_mean"])
    print(f"\n| mixer | seeds | {SRC} (source) | {TGT} (target) | balanced score | vs best baseline "
          f"({best['mixer']}), paired | mean source weight |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mixer']} | {r['seeds']} | {r['source_loss_mean']:.3f} +- {r['source_loss_std']:.3f} | "
              f"{r['target_loss_mean']:.3f} +- {r['target_loss_std']:.3f} | "
              f"{r['balanced_mean']:+.4f} +- {r['balanced_std']:.4f} | "
              f"{r['vs_best_mean']:+.4f} +- {r['vs_best_std']:.4f} | {r['source_weight_mean']:.2f} |")
    out = ROOT / "benchmarks" / "results" / ("mixers-quick.json" if args.quick else "mixers.json")
    out.write_text(json.dumps({"date": str(date.today()), "machine": machine, "tokens_per_stage": T,
                               "seeds": args.seeds, "trajectories": len(explored), "agent": meta,
                               "wall_s": time.perf_counter() - t_start, "rows": rows}, indent=1, default=str))
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
