"""The Data Mixing Agent in the paper's regime: many domains, hundreds of trajectories, unseen spaces.

Domain spaces: benchmarks/many_domains.py (18 domains from the built-in text, 2 of them junk;
training spaces of 12 domains with German-prose targets; evaluation settings code-13 and
de-tech-9, other targets and other domain counts). Runs: benchmarks/mixing_lab.py (cpt's model,
mixers and agent features in a lean loop; each run a Ray task of 1 CPU). The score of a run is
    balanced = -1/2 (relative change of the mean source loss + relative change of the mean target loss)
from the stage start (junk domains are in neither), the agent's reward per round likewise.

Phases (each run's result is a JSON file under --work: a stopped benchmark continues):
  1. mixture matters: 32 random Dirichlet static mixtures per evaluation setting on the proxy (seed
     0), 16 of them again with seed 1 -> balanced-score range vs the seed noise;
  2. exploration: --trajectories proxy runs on training spaces with a fresh random mixture each
     round (the `dirichlet` mixer, as `cpt agent explore`), transitions kept;
  3. agents: AWR (beta 0.5, 0.2, 0.1, 0.05) and CQL trained on those transitions
     (mixers/agent_train.py, epoch chosen on held-out exploration trajectories), then each drives
     proxy runs on 12 validation spaces (training-type spaces with new seeds): the best is
     evaluated beside the defaults (AWR beta 0.5, CQL). Nothing comes from the evaluation settings;
  4. evaluation: every mixer, RegMix (ridge regression of phase 1's scores on the mixture, the mean
     of the top 100 of 100,000 predicted mixtures) and the best of phase 1's 32, on both evaluation
     settings with the larger model, --seeds seeds, paired differences to the best baseline.

    python benchmarks/mixing_many.py [--trajectories 320] [--seeds 3] [--work .bench/mixing-many]
    python benchmarks/mixing_many.py --quick     # smoke check (< 15 min)
Raw results: rows appended to benchmarks/results/mixers.json (suite "many", `domains` per row;
mixers-many-quick.json for --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from many_domains import BASE, EVAL, build, training_space  # noqa: E402
from mixing_lab import Lab, mean_std, params, run_stage  # noqa: E402

MODELS = {"proxy": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 176},
          "eval": {"hidden_size": 128, "num_layers": 3, "num_heads": 4, "intermediate_size": 352}}
BASE_SEEDS = 4  # proxy base models the exploration trajectories start from


def _key_path(work: Path, key: str) -> Path:
    return work / "runs" / (key.replace("/", "__") + ".json")


def task(data: dict, vocab: int, work: str, key: str, setting, mixer_cfg: dict, size: str, seed: int,
         base_seed: int, a) -> dict:
    """One run in a Ray worker (1 CPU): stage 2 of `setting` with the mixer, result to its JSON file."""
    from mixers.base import build_mixer

    lab = Lab(data, vocab, MODELS, Path(work), threads=int(os.environ.get("OMP_NUM_THREADS", "1")))
    reference = mixer_cfg.pop("_reference", None)
    fraction = mixer_cfg.pop("_fraction", 0.0)
    mixer = build_mixer(mixer_cfg)
    out = run_stage(lab, setting, mixer, size, seed, a["rounds"], a["steps"], a["base_steps"], BASE,
                    reference=reference, base_seed=base_seed, replay_fraction=fraction)
    out.update(key=key, setting=setting.name, domains=len(setting.domains), size=size, seed=seed)
    path = _key_path(Path(work), key)
    path.write_text(json.dumps(out))
    return out


class Runner:
    """Runs keyed jobs as Ray tasks; a key whose JSON exists is read, not run."""

    def __init__(self, work: Path, data: dict, vocab: int, args: dict):
        import ray

        self.work, self.vocab, self.args = work, vocab, args
        (work / "runs").mkdir(parents=True, exist_ok=True)
        if not ray.is_initialized():
            ray.init(num_cpus=os.cpu_count(), object_store_memory=300 * 2**20, include_dashboard=False,
                     _temp_dir=str(work / "ray"), log_to_driver=False)
        self.data_ref = ray.put(data)
        self.remote = ray.remote(num_cpus=1, max_retries=1)(task)

    def many(self, jobs: list[tuple]) -> dict[str, dict]:
        """jobs: (key, setting, mixer config, size, seed, base seed)."""
        import ray

        out, refs = {}, {}
        for key, setting, cfg, size, seed, base_seed in jobs:
            path = _key_path(self.work, key)
            if path.exists():
                out[key] = json.loads(path.read_text())
            else:
                refs[self.remote.remote(self.data_ref, self.vocab, str(self.work), key, setting, dict(cfg), size,
                                        seed, base_seed, self.args)] = key
        t0, total = time.perf_counter(), len(refs)
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                out[refs.pop(ref)] = ray.get(ref)
            if (total - len(refs)) % 20 == 0 or not refs:
                print(f"  {total - len(refs)}/{total} runs, {time.perf_counter() - t0:.0f} s", flush=True)
        return out


def dirichlet(k: int, rng: np.random.Generator) -> list[float]:
    return rng.dirichlet(np.ones(k)).tolist()


def static(setting, w: list[float]) -> dict:
    return {"kind": "static", "weights": dict(zip(setting.domains, w, strict=True))}


def matters(runner: Runner, quick: bool) -> tuple[dict, dict[str, list]]:
    """Phase 1: per evaluation setting, 32 random mixtures (seed 0) and 8 repeated with seed 1."""
    n, rep = (12, 4) if quick else (32, 16)
    jobs, mixes = [], {}
    for s in EVAL:
        rng = np.random.default_rng(7)
        mixes[s.name] = [dirichlet(len(s.domains), rng) for _ in range(n)]
        for i, w in enumerate(mixes[s.name]):
            for seed in (0, 1) if i < rep else (0,):
                jobs.append((f"matters/{s.name}/{i}/s{seed}", s, static(s, w), "proxy", seed, seed))
    res = runner.many(jobs)
    table, points = {}, {}
    for s in EVAL:
        scores = [res[f"matters/{s.name}/{i}/s0"]["balanced"] for i in range(n)]
        diffs = [res[f"matters/{s.name}/{i}/s1"]["balanced"] - res[f"matters/{s.name}/{i}/s0"]["balanced"]
                 for i in range(rep)]
        noise = mean_std(diffs)[1]  # std of a paired difference (seed 1 - seed 0, same mixture)
        spread = max(scores) - min(scores)
        table[s.name] = {"domains": len(s.domains), "mixtures": n, "pairs": rep, "range": spread,
                         "best": max(scores), "worst": min(scores), "paired_seed_noise_std": noise,
                         "range_over_noise": spread / noise if noise else None,
                         # one run's seed noise: a paired difference holds two runs' noise
                         "seed_noise_std": noise / 2**0.5, "range_over_seed_noise": spread * 2**0.5 / noise
                         if noise else None}
        points[s.name] = list(zip(mixes[s.name], scores, strict=True))
    return table, points


def regmix(points: list[tuple[list[float], float]], k: int) -> list[float]:
    """RegMix (Liu et al. 2024): regress the score on the mixture, then average the top 100 of
    100,000 random mixtures by predicted score."""
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    xb = np.hstack([x, np.ones((len(x), 1))])
    coef = np.linalg.solve(xb.T @ xb + 1e-3 * np.eye(k + 1), xb.T @ y)
    cand = np.random.default_rng(0).dirichlet(np.ones(k), size=100_000)
    pred = cand @ coef[:k] + coef[k]
    best = cand[np.argsort(pred)[-100:]].mean(0)
    return (best / best.sum()).tolist()


def explore(runner: Runner, n: int) -> list:
    """Phase 2: n trajectories on training spaces with random mixtures each round -> agent Steps."""
    from mixers.agent import FEATURE_VERSION
    from mixers.agent_rewards import Step

    jobs = [(f"explore-v{FEATURE_VERSION}/{k}", training_space(k), {"kind": "dirichlet", "concentration": 1.0,
                                                                    "seed": k}, "proxy", 1000 + k, k % BASE_SEEDS)
            for k in range(n)]
    res = runner.many(jobs)
    steps = []
    for k in range(n):
        for t in res[f"explore-v{FEATURE_VERSION}/{k}"]["transitions"]:
            steps.append(Step(f"explore{k}", 1, t["round"], t["state"], t["action"], t["reward"], t["next_state"],
                              t["done"], t["domains"]))
    return steps


CANDIDATES = {"awr": {"method": "awr"}, "cql": {"method": "cql"}, "awr-beta0.2": {"method": "awr", "beta": 0.2},
              "awr-beta0.1": {"method": "awr", "beta": 0.1}, "awr-beta0.05": {"method": "awr", "beta": 0.05}}
"""Agents trained on the same transitions: the defaults of `cpt agent train` and sharper AWR."""


def train_agents(work: Path, steps: list, quick: bool) -> dict[str, dict]:
    """Phase 3: every candidate on the exploration transitions (agent files under --work)."""
    from mixers.agent import FEATURE_VERSION, load_agent, save_agent
    from mixers.agent_train import train_agent

    out = {}
    for name, kw in CANDIDATES.items():
        path = work / f"agent-{name}-v{FEATURE_VERSION}-{len(steps)}.safetensors"
        if not path.exists():
            t0 = time.perf_counter()
            nets, meta = train_agent(steps, epochs=150 if quick else 400, seed=0, **kw)
            save_agent(nets, path, {**meta, "models": json.dumps([f"proxy {MODELS['proxy']}"])})
            print(f"  agent {name}: {time.perf_counter() - t0:.0f} s, held-out score {meta['val_score']} at "
                  f"epoch {meta['best_epoch']}", flush=True)
        meta = load_agent(path)[1]
        out[name] = {"path": str(path), **{k: meta[k] for k in ("method", "val_score", "best_epoch", "epochs",
                                                                "transitions", "val_transitions", "trajectories",
                                                                "val_trajectories", "val_curve")}}
    return out


def select(runner: Runner, agents: dict, n: int) -> tuple[str, dict]:
    """Phase 3b: each candidate (and static uniform) driving proxy runs on n validation spaces:
    training-type spaces and seeds no trajectory used (not the evaluation settings). -> (the best
    candidate by mean balanced score, the table)."""
    spaces = [(training_space(10_000 + j), 20_000 + j, j % BASE_SEEDS) for j in range(n)]
    jobs = []
    for j, (sp, seed, base) in enumerate(spaces):
        k = len(sp.domains)
        jobs.append((f"val/uniform/{j}", sp, static(sp, [1 / k] * k), "proxy", seed, base))
        for a in agents.values():
            jobs.append((f"val/{Path(a['path']).stem}/{j}", sp, {"kind": "agent", "path": a["path"]}, "proxy", seed,
                         base))
    res = runner.many(jobs)
    uni = [res[f"val/uniform/{j}"]["balanced"] for j in range(n)]
    table = {"static uniform": {"balanced_mean": mean_std(uni)[0], "balanced_std": mean_std(uni)[1]}}
    for name, a in agents.items():
        bal = [res[f"val/{Path(a['path']).stem}/{j}"]["balanced"] for j in range(n)]
        diff = [b - u for b, u in zip(bal, uni, strict=True)]
        junk = [sum(w[d] for w in r["weights"] for d in sp.junk) / len(r["weights"])
                for r, (sp, _, _) in zip((res[f"val/{Path(a['path']).stem}/{j}"] for j in range(n)), spaces,
                                         strict=True)]
        table[name] = {"balanced_mean": mean_std(bal)[0], "balanced_std": mean_std(bal)[1],
                       "vs_uniform_mean": mean_std(diff)[0], "vs_uniform_std": mean_std(diff)[1],
                       "junk_weight_mean": mean_std(junk)[0]}
    best = max(agents, key=lambda a: table[a]["balanced_mean"])
    return best, table


def mixers_for(setting, agents: dict, points: list, selected: str) -> dict[str, dict]:
    k = len(setting.domains)
    best32 = max(points, key=lambda p: p[1])[0]
    return {
        "static uniform": static(setting, [1 / k] * k),
        "fixed_replay 25%": {"kind": "fixed_replay", "_fraction": 0.25},
        "temperature tau=2": {"kind": "temperature", "temperature": 2.0, "_fraction": 0.25},
        "proportional": {"kind": "proportional", "_fraction": 0.25},
        "doremi (ref = uniform run)": {"kind": "doremi", "smoothing": 0.05},
        "odm (EXP3)": {"kind": "odm"},
        "recap": {"kind": "recap", "window": 10, "temperature": 0.05},
        "dirichlet (random each round)": {"kind": "dirichlet", "concentration": 1.0, "seed": 0},
        "regmix (proxy regression)": static(setting, regmix(points, k)),
        "best of 32 random (proxy)": static(setting, best32),
        "agent (AWR)": {"kind": "agent", "path": agents["awr"]["path"]},
        "agent (CQL)": {"kind": "agent", "path": agents["cql"]["path"]},
        **({f"agent (selected: {selected})": {"kind": "agent", "path": agents[selected]["path"]}}
           if selected not in ("awr", "cql") else {}),
    }


def evaluate(runner: Runner, agents: dict, points: dict, seeds: int, selected: str) -> list[dict]:
    """Phase 4: every mixer on both evaluation settings, larger model, paired seeds (100, 101, ...)."""
    rows = []
    for s in EVAL:
        mixers = mixers_for(s, agents, points[s.name], selected)
        seed_list = [100 + i for i in range(seeds)]
        first = runner.many([(f"eval/{s.name}/static uniform/s{x}", s, mixers["static uniform"], "eval", x, x)
                             for x in seed_list])
        jobs = []

        def key(name: str, x: int, s=s, mixers=mixers) -> str:  # an agent's runs are keyed by its file
            cfg = mixers[name]
            agent = f"/{Path(cfg['path']).stem}" if cfg["kind"] == "agent" else ""
            return f"eval/{s.name}/{name}{agent}/s{x}"

        for name, cfg in mixers.items():
            for x in seed_list:
                if name.startswith("doremi"):
                    cfg = {**cfg, "_reference": first[f"eval/{s.name}/static uniform/s{x}"]["final"]}
                jobs.append((key(name, x), s, cfg, "eval", x, x))
        res = runner.many(jobs)
        per = {name: [res[key(name, x)] for x in seed_list] for name in mixers}
        baselines = [n for n in mixers if not n.startswith("agent")]
        best = max(baselines, key=lambda n: mean_std([r["balanced"] for r in per[n]])[0])
        for name, runs in per.items():
            bal = [r["balanced"] for r in runs]
            diff = [r["balanced"] - b["balanced"] for r, b in zip(runs, per[best], strict=True)]
            dm, ds = mean_std(diff)
            tgt = [sum(r["final"][d] for d in s.targets) / len(s.targets) for r in runs]
            src = [sum(r["final"][d] for d in s.sources) / len(s.sources) for r in runs]
            junk = [sum(w[d] for w in r["weights"] for d in s.junk) / len(r["weights"]) for r in runs]
            rows.append({"suite": "many", "setting": s.name, "pair": s.name, "domains": len(s.domains),
                         "mixer": name, "seeds": len(runs), "balanced_mean": mean_std(bal)[0],
                         "balanced_std": mean_std(bal)[1], "per_seed_balanced": bal,
                         "target_loss_mean": mean_std(tgt)[0], "source_loss_mean": mean_std(src)[0],
                         "junk_weight_mean": mean_std(junk)[0], "vs_best_baseline": best, "vs_best_mean": dm,
                         "vs_best_std": ds, "beats_best_by_2std": dm > 2 * ds and dm > 0,
                         "seconds_mean": mean_std([r["seconds"] for r in runs])[0]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Smoke check: fewer runs, shorter stages.")
    ap.add_argument("--trajectories", type=int, default=320)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="Steps per round.")
    ap.add_argument("--base-steps", type=int, default=400, help="Steps of the base models (source field).")
    ap.add_argument("--tokens", type=int, default=120_000, help="Training tokens per domain.")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench" / "mixing-many")
    args = ap.parse_args()
    if args.quick:
        args.trajectories, args.seeds, args.steps, args.base_steps = 24, 2, 10, 150
        args.work = args.work.with_name(args.work.name + "-quick")
    t0 = time.perf_counter()
    data = build(args.work, args.tokens, 2048 + 64 * 33)
    from corpus.tokenizer import load_tokenizer

    vocab = load_tokenizer(args.work / "tokenizer-1024.json").get_vocab_size()
    knobs = {"rounds": args.rounds, "steps": args.steps, "base_steps": args.base_steps}
    runner = Runner(args.work, data, vocab, knobs)
    lab = Lab(data, vocab, MODELS, args.work)
    sizes = {k: params(lab, k) for k in MODELS}
    print(f"models: {sizes} ({sizes['eval'] / sizes['proxy']:.1f}x)", flush=True)
    print("phase 1: does the mixture matter?", flush=True)
    table, points = matters(runner, args.quick)
    for name, row in table.items():
        print(f"  {name}: {json.dumps(row)}", flush=True)
    print(f"phase 2: {args.trajectories} exploration trajectories", flush=True)
    steps = explore(runner, args.trajectories)
    print("phase 3: agents", flush=True)
    agents = train_agents(args.work, steps, args.quick)
    print("phase 3b: the agents on validation spaces (training-type spaces, new seeds)", flush=True)
    selected, validation = select(runner, agents, 4 if args.quick else 12)
    for name, row in validation.items():
        print(f"  {name:<14} {json.dumps(row)}", flush=True)
    print(f"  selected: {selected}", flush=True)
    print("phase 4: evaluation", flush=True)
    rows = evaluate(runner, agents, points, args.seeds, selected)
    for r in rows:
        print(f"  {r['setting']:>10} {r['mixer']:<30} {r['balanced_mean']:+.4f} +- {r['balanced_std']:.4f}  "
              f"vs best {r['vs_best_mean']:+.4f} +- {r['vs_best_std']:.4f}  junk {r['junk_weight_mean']:.2f}",
              flush=True)
    returns = [sum(t.reward for t in steps if t.run_id == f"explore{k}") for k in range(args.trajectories)]
    many = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "models": {k: {"config": MODELS[k], "params": v} for k, v in sizes.items()},
            "mixture_matters": table, "agents": agents, "validation": validation, "selected": selected,
            "exploration": {"trajectories": args.trajectories, "transitions": len(steps),
                            "return_mean": mean_std(returns)[0], "return_std": mean_std(returns)[1]},
            "wall_s": time.perf_counter() - t0}
    out = ROOT / "benchmarks" / "results" / ("mixers-many-quick.json" if args.quick else "mixers.json")
    old = json.loads(out.read_text()) if out.exists() else {"rows": []}
    for r in old["rows"]:  # the 2-3 domain rows of benchmarks/mixing.py: their domain count
        r.setdefault("domains", r["pair"].split("->")[0].count("+") + 2)
    old["rows"] = [r for r in old["rows"] if r.get("suite") != "many"] + rows
    old["many"] = many
    out.write_text(json.dumps(old, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)} ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
