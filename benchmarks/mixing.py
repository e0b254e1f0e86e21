"""Every mixer on continual runs at equal tokens: sources kept, target learned; three unseen settings.

Setup per evaluation setting: a stage-1 model trained on the source domain(s); stage 2 learns the
target domain from that checkpoint in 6 rounds while replaying the sources, and the mixer picks
the weights each round. Reported: final validation loss per domain and the balanced score
    balanced = -1/2 (relative change of the mean source loss + relative change of the target loss)
measured from the stage-1 checkpoint (higher is better; the Data Mixing Agent's objective).
Evaluation settings: prose-en->prose-de, tech-en->code-py, and three domains prose-en+tech-en->prose-de.

Every mixer runs with several seeds (the seed sets the stage-1 model's init and both stages' data
order; stage 2 of seed s continues seed s's stage-1 model); reported per mixer and setting: mean
and standard deviation of the balanced score and of each domain's final loss, and the paired
difference to the best baseline on the same seeds (mean and std of the per-seed differences).

The agent never sees an evaluation setting: it learns from exploration trajectories of a smaller
proxy model on other settings (prose-en->tech-de, code-py->tech-de, prose-en+code-py->tech-de, so
2 and 3 domains) and other seeds; AWR and CQL train on the same transitions, each selecting its
epoch on held-out *exploration* trajectories. Nothing is tuned on the evaluation settings.

    python benchmarks/mixing.py [--tokens 100000] [--trajectories 64] [--seeds 3] [--eval-batches 4]
    python benchmarks/mixing.py --quick     # smoke check: fewer tokens, seeds and mixers (< 15 min)
Re-running reuses finished runs and trajectories (a stopped benchmark continues).
Raw results: benchmarks/results/mixers.json (mixers-quick.json for --quick), one row per mixer
and evaluation setting: {"rows": [{"pair", "mixer", "seeds", "balanced_mean", "balanced_std", ...}]}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EVAL = [(("prose-en",), "prose-de"), (("tech-en",), "code-py"), (("prose-en", "tech-en"), "prose-de")]
PROXY = [(("prose-en",), "tech-de"), (("code-py",), "tech-de"), (("prose-en", "code-py"), "tech-de")]
COSINE = {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4, "warmup": 0.02}
MODEL = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 352}
PROXY_MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 176}


def label(setting) -> str:
    return f"{'+'.join(setting[0])}->{setting[1]}"


def slug(setting) -> str:
    return label(setting).replace("->", "-to-").replace("+", "-")


EVAL_BATCHES = 4  # validation batches per domain and round (--eval-batches)
REPORT = False  # --report: tables from the runs that finished, nothing is started


def spec(name, root: Path, setting, stages, model=None, seed=0, path=None) -> dict:
    model = {**(model or MODEL), "path": path}
    domains = [*setting[0], setting[1]]
    return {"name": name, "seed": seed, "tokenizer": str(root / "tokenizer.json"), "seq_len": 128,
            "batch_size": 16, "model": model, "domains": {d: str(root / "data" / d) for d in domains},
            "stages": stages, "eval_batches": EVAL_BATCHES, "resources": {"cpus": 1},
            "tracking": {"experiment": "cpt-mixers"}}


def pretrain(tokens: int, setting, rounds: int = 2) -> list[dict]:
    return [{"name": "sources", "domains": list(setting[0]), "tokens": tokens, "rounds": rounds, "schedule": COSINE}]


def stage2(tokens: int, setting, mixer: dict, replay: float = 0.25, **extra) -> list[dict]:
    from mixers.base import build_mixer

    # replay.fraction only where the mixer reads it (the others set the replay share themselves)
    fraction = replay if build_mixer(mixer).reads_replay_fraction() else 0.0
    return [{"name": "continue", "domains": [setting[1]], "tokens": tokens, "rounds": 6, "schedule": COSINE,
             "replay": {"fraction": fraction, "sources": list(setting[0])}, "mixer": mixer, **extra}]


def run(store, home, raw: dict) -> str | None:
    """One run to its end in this thread; a finished run of the same spec is reused."""
    from orchestrator.controller import Controller
    from orchestrator.spec import parse_spec
    from orchestrator.submit import create_run
    from store.runs import RunStore

    for existing in store.list_runs(100_000):
        if existing.name == raw["name"] and existing.status == "finished" and yaml.safe_load(existing.spec_yaml) == raw:
            print(f"  {raw['name']}: reused {existing.id}", flush=True)
            return existing.id
    if REPORT:
        print(f"  {raw['name']}: missing", flush=True)
        return None
    text = yaml.safe_dump(raw)
    rid = create_run(store, home, parse_spec(text), text)
    t0 = time.perf_counter()
    status = Controller(RunStore(store.url), home, rid, tracking=False).run()
    print(f"  {raw['name']}: {status}, {time.perf_counter() - t0:.0f} s", flush=True)
    if status != "finished":
        raise SystemExit(f"{raw['name']}: {status}")
    return rid


def _digest(path: str) -> str:
    file = Path(path)
    return hashlib.sha256(file.read_bytes()).hexdigest()[:8] if file.exists() else "missing"


def scores(store, rid: str, setting) -> dict:
    from corpus.names import source_name
    from mixers.agent import balanced_reward

    sources, target = setting
    done = store.rounds(rid, status="finished")
    before = done[0].result.eval_before
    after = done[-1].eval_losses
    share = [sum(w for d, w in r.weights.items() if source_name(d) in sources) for r in done]
    return {"src": statistics.fmean(after[s] for s in sources), "tgt": after[target],
            "balanced": balanced_reward(before, after, [target], list(sources)),
            "src_share": statistics.fmean(share)}


def _stats(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def train_agents(store, home, args, pool) -> dict[str, Path]:
    """Proxy stage 1 per proxy setting, random-mixture trajectories, then AWR and CQL on them."""
    from mixers.agent import FEATURE_VERSION, save_agent
    from mixers.agent_train import train_agent
    from orchestrator.explore import describe_runs, explore
    from orchestrator.spec import parse_spec

    T, root = args.tokens, home.root
    if REPORT:
        return {m: root / f"agent-{m}.safetensors" for m in ("awr", "cql")}
    per = math.ceil(args.trajectories / len(PROXY))
    ckpts = dict(zip(PROXY, pool.map(lambda s: store.rounds(run(store, home, spec(
        f"proxy-pretrain-{slug(s)}", root, s, pretrain(T // 2, s, 1), PROXY_MODEL, seed=100)),
        status="finished")[-1].checkpoint_uri, PROXY), strict=True))
    explored, t0 = [], time.perf_counter()
    for s in PROXY:
        raw = spec(f"proxy-{slug(s)}", root, s, stage2(T // 2, s, {"kind": "fixed_replay"}), PROXY_MODEL,
                   seed=200, path=ckpts[s])
        status = explore(store, home, parse_spec(yaml.safe_dump(raw)), per, 1.0, parallel=args.parallel)
        explored += [rid for rid, st in status.items() if st == "finished"]
    print(f"  explore: {len(explored)} trajectories, {time.perf_counter() - t0:.0f} s", flush=True)
    # only exploration transitions: evaluation runs store theirs too, and must not leak in
    rows = store.transitions(feature_version=FEATURE_VERSION, runs=explored)
    agents = {}
    for method in ("awr", "cql"):
        nets, meta = train_agent(rows, method=method, describe=describe_runs(store, explored))
        agents[method] = save_agent(nets, root / f"agent-{method}.safetensors", meta)
        print(f"  agent {method}: {meta['transitions']}+{meta['val_transitions']} transitions, held-out score "
              f"{meta['val_score']} at epoch {meta['best_epoch']}", flush=True)
    return agents


def mixers_for(setting, agents: dict[str, Path], quick: bool) -> dict[str, tuple]:
    sources, target = setting
    half = {target: 0.5, **{s: 0.5 / len(sources) for s in sources}}
    out = {
        **{f"fixed_replay {int(f * 100)}%": ({"kind": "fixed_replay"}, f, {}) for f in (0.1, 0.25, 0.4)},
        "static 50/50": ({"kind": "static", "weights": half}, 0.0, {}),
        "temperature tau=2 (pooled)": ({"kind": "temperature", "temperature": 2.0, "pool": True}, 0.0, {}),
        "odm (EXP3)": ({"kind": "odm"}, 0.0, {}),
        "recap": ({"kind": "recap", "window": 10, "temperature": 0.05}, 0.0, {}),
        "agent (AWR)": ({"kind": "agent", "path": str(agents["awr"])}, 0.0, {}),
        "agent (CQL)": ({"kind": "agent", "path": str(agents["cql"])}, 0.0, {}),
    }
    keep = ("static 50/50", "agent (AWR)", "agent (CQL)")
    return {k: v for k, v in out.items() if not quick or k in keep}


def evaluate(store, home, args, agents, pool) -> dict[tuple, dict[str, dict[int, dict]]]:
    """Per setting and seed one stage-1 model; every mixer continues it (in waves, `parallel` at once)."""
    T, root = args.tokens, home.root
    jobs = [(s, seed) for s in EVAL for seed in range(args.seeds)]
    pre = dict(zip(jobs, pool.map(lambda j: run(store, home, spec(
        f"pretrain-{slug(j[0])}-s{j[1]}", root, j[0], pretrain(T, j[0]), seed=j[1])), jobs), strict=True))
    ckpt = {j: store.rounds(rid, status="finished")[-1].checkpoint_uri for j, rid in pre.items() if rid}
    jobs = [j for j in jobs if j in ckpt]
    wave = [(s, seed, name, m) for s, seed in jobs for name, m in mixers_for(s, agents, args.quick).items()]

    def one(job, mixer, replay, extra):
        s, seed, name = job
        key = name.split()[0].replace("/", "-") + (name.split()[1].strip("%") if "%" in name else "")
        key += "-cql" if "CQL" in name else ""
        if mixer["kind"] == "agent":  # same path, other weights after a retraining: never reuse those runs
            key += "-" + _digest(mixer["path"])
        return run(store, home, spec(f"mix-{slug(s)}-{key}-s{seed}", root, s, stage2(T, s, mixer, replay, **extra),
                                     seed=seed, path=ckpt[s, seed]))

    ids = dict(zip([(s, seed, n) for s, seed, n, _ in wave],
                   pool.map(lambda w: one(w[:3], *w[3]), wave), strict=True))
    if not args.quick:  # DoReMi's reference model: the uniform (static 50/50) run's final losses, same seed
        ref = [(s, seed) for s, seed in jobs if ids[(s, seed, "static 50/50")]]
        ids.update(zip([(s, seed, "doremi (ref = 50/50 run)") for s, seed in ref], pool.map(lambda j: one(
            (*j, "doremi"), {"kind": "doremi", "reference_run": ids[(*j, "static 50/50")], "smoothing": 0.05},
            0.0, {}), ref), strict=True))
    out: dict[tuple, dict[str, dict[int, dict]]] = {}
    for (s, seed, name), rid in ids.items():
        if rid:
            out.setdefault(s, {}).setdefault(name, {})[seed] = scores(store, rid, s)
    for s, by_mixer in out.items():  # a partial report compares on the seeds every mixer finished
        common = set.intersection(*(set(v) for v in by_mixer.values()))
        out[s] = {name: {k: v for k, v in by_seed.items() if k in common} for name, by_seed in by_mixer.items()}
    return {s: v for s, v in out.items() if any(v.values())}


def rows_for(setting, per_seed: dict[str, dict[int, dict]]) -> list[dict]:
    rows = []
    for name, by_seed in per_seed.items():
        row = {"pair": label(setting), "mixer": name, "seeds": len(by_seed)}
        for key, col in (("balanced", "balanced"), ("src", "source_loss"), ("tgt", "target_loss"),
                         ("src_share", "source_weight")):
            row[f"{col}_mean"], row[f"{col}_std"] = _stats([s[key] for s in by_seed.values()])
        row["per_seed_balanced"] = [by_seed[k]["balanced"] for k in sorted(by_seed)]
        rows.append(row)
    best = max((r for r in rows if not r["mixer"].startswith("agent")), key=lambda r: r["balanced_mean"])
    for r in rows:  # paired on seeds: the same stage-1 model and data order on both sides
        diffs = [a - b for a, b in zip(r["per_seed_balanced"], best["per_seed_balanced"], strict=True)]
        r["vs_best_baseline"], (r["vs_best_mean"], r["vs_best_std"]) = best["mixer"], _stats(diffs)
        # the bar (margin over twice the std across seeds) and the paired one (twice the std of the differences)
        r["beats_best_by_2std"] = r["vs_best_mean"] > 0 and r["vs_best_mean"] > 2 * r["balanced_std"]
        r["beats_best_paired"] = r["vs_best_mean"] > 0 and r["vs_best_mean"] > 2 * r["vs_best_std"]
    rows.sort(key=lambda r: -r["balanced_mean"])
    print(f"\n{label(setting)}\n| mixer | seeds | source loss | target loss | balanced score | vs best baseline "
          f"({best['mixer']}), paired | mean source weight |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mixer']} | {r['seeds']} | {r['source_loss_mean']:.3f} +- {r['source_loss_std']:.3f} | "
              f"{r['target_loss_mean']:.3f} +- {r['target_loss_std']:.3f} | "
              f"{r['balanced_mean']:+.4f} +- {r['balanced_std']:.4f} | "
              f"{r['vs_best_mean']:+.4f} +- {r['vs_best_std']:.4f} | {r['source_weight_mean']:.2f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=100_000, help="tokens of stage 1 and of stage 2")
    ap.add_argument("--trajectories", type=int, default=64, help="exploration trajectories (all proxy settings)")
    ap.add_argument("--seeds", type=int, default=3, help="evaluation seeds per mixer (paired across mixers)")
    ap.add_argument("--eval-batches", type=int, default=4, help="validation batches per domain and round "
                    "(the same fixed batches for every mixer, so paired differences stay exact)")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once (each on one CPU)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke check: 30k tokens, 2 seeds, 6 trajectories, 3 mixers, 4 eval batches; "
                         "results/mixers-quick.json")
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--report", action="store_true", help="only tables from the finished runs (a partial "
                    "run is compared on the seeds every mixer finished); writes results/mixers*-partial.json")
    args = ap.parse_args()
    global EVAL_BATCHES, REPORT
    if args.quick:
        args.tokens, args.seeds, args.trajectories, args.eval_batches = 30_000, 2, 6, 4
    EVAL_BATCHES, REPORT = args.eval_batches, args.report
    args.home = args.home or ROOT / "cpt-home" / ("mixers-quick" if args.quick else "mixers")
    from corpus.builtin import prepare_builtins
    from orchestrator import cluster
    from orchestrator.home import Home
    from store.runs import RunStore

    home = Home.from_env(args.home)
    names = sorted({d for s in EVAL + PROXY for d in (*s[0], s[1])})
    if not REPORT:
        prepare_builtins(home.data, home.tokenizer, names, install=True, log=lambda m: print(" ", m))
        cluster.connect(home)
    store = RunStore(home.store_url)
    machine = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, {date.today()}"
    print(f"machine: {machine}; {args.tokens:,} tokens per stage, {args.seeds} seed(s)", flush=True)
    t_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        agents = train_agents(store, home, args, pool)
        results = evaluate(store, home, args, agents, pool)
    cluster.shutdown()
    from mixers.agent import load_agent

    rows = [r for s in EVAL if s in results for r in rows_for(s, results[s])]
    name = ("mixers-quick" if args.quick else "mixers") + ("-partial" if REPORT else "")
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps({"date": str(date.today()), "machine": machine, "tokens_per_stage": args.tokens,
                               "eval_batches": EVAL_BATCHES, "seeds": args.seeds, "trajectories": args.trajectories,
                               "agents": {m: load_agent(p)[1] for m, p in agents.items()},
                               "wall_s": time.perf_counter() - t_start, "partial": REPORT, "rows": rows},
                              indent=1, default=str))
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
