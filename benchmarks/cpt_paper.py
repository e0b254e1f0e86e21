"""Ibrahim et al. 2024 at small scale, driven through cpt: re-warm + re-decay + replay vs alternatives.

For a weak shift (English prose -> English technical text) and a strong shift (English -> German):
  constant    stage 2 at a constant small LR (= min LR, no re-warm), no replay
  rewarm-X%   cosine re-warm to the stage-1 peak and re-decay, X% replay of stage-1 data (0, 1, 5, 25)
  infinite    'infinite' schedule: stage 1 cools down to a constant LR; stage 2 continues at it (no
              re-warm) and anneals at the end, with the paper's replay choice (5% weak, 25% strong)
  union       from scratch on the union (50/50) with the combined token budget
All continual conditions start from the same stage-1 checkpoint (a cpt run; `model.path` points at
its last round), reset AdamW, and see the same number of stage-2 tokens.

    python benchmarks/cpt_paper.py [--tokens 400000] [--shifts weak,strong]
Writes benchmarks/results/cpt_paper_<shift>.png, the raw rows to benchmarks/results/cpt_paper.json,
and prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PEAK, MIN = 3e-3, 3e-4
SHIFTS = {"weak": ("prose-en", "tech-en"), "strong": ("prose-en", "prose-de")}
PAPER_REPLAY = {"weak": 0.05, "strong": 0.25}


def base_spec(name: str, home: Path, domains: list[str], stages: list[dict], path: str | None = None) -> dict:
    model = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 352, "path": path}
    return {"name": name, "seed": 0, "tokenizer": str(home / "tokenizer.json"), "seq_len": 128, "batch_size": 16,
            "model": model, "domains": {d: str(home / "data" / d) for d in domains}, "stages": stages,
            "eval_batches": 8, "resources": {"cpus": 2}, "tracking": {"experiment": "cpt-paper"}}


def cosine(warmup: float = 0.02) -> dict:
    return {"kind": "cosine", "peak_lr": PEAK, "min_lr": MIN, "warmup": warmup}


def run(store, home, spec: dict) -> str:
    from orchestrator.controller import Controller
    from orchestrator.spec import parse_spec
    from orchestrator.submit import create_run

    for existing in store.list_runs(10_000):  # re-running the script reuses finished conditions
        if existing.name == spec["name"] and existing.status == "finished" and \
                yaml.safe_load(existing.spec_yaml) == spec:
            print(f"  {spec['name']}: reused {existing.id}", flush=True)
            return existing.id
    text = yaml.safe_dump(spec)
    run_id = create_run(store, home, parse_spec(text), text)
    t0 = time.perf_counter()
    Controller(store, home, run_id).run()
    print(f"  {spec['name']}: {time.perf_counter() - t0:.0f} s", flush=True)
    return run_id


def last_checkpoint(store, run_id: str) -> str:
    return store.rounds(run_id, status="finished")[-1].checkpoint_uri


def stage_stats(store, run_id: str, stage: int) -> tuple[int, float]:

    rs = [r for r in store.rounds(run_id, status="finished") if r.stage_index == stage]
    return sum(r.tokens for r in rs), sum(r.result.wall_s for r in rs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=400_000, help="tokens per stage")
    ap.add_argument("--shifts", default="weak,strong")
    ap.add_argument("--home", type=Path, default=ROOT / "cpt-home" / "paper")
    args = ap.parse_args()
    from corpus.builtin import prepare_builtins
    from orchestrator import cluster
    from orchestrator.home import Home
    from orchestrator.reports import curve, plot_curves, summary
    from store.runs import RunStore

    home = Home.from_env(args.home)
    prepare_builtins(home.data, home.tokenizer, ["prose-en", "tech-en", "prose-de"], install=True,
                     log=lambda m: print(" ", m))
    store = RunStore(home.store_url)
    T = args.tokens
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
          f"{date.today()}; {T:,} tokens per stage", flush=True)

    print("stage 1 (shared): English prose, cosine / infinite", flush=True)
    pre_cos = run(store, home, base_spec("pretrain-cosine", home.root, ["prose-en"],
                                         [{"name": "en", "domains": ["prose-en"], "tokens": T, "rounds": 2,
                                           "schedule": cosine()}]))
    inf1 = {"kind": "infinite", "peak_lr": PEAK, "const_lr": (PEAK + MIN) / 2, "min_lr": MIN, "warmup": 0.02,
            "cooldown": 0.6, "constant": 0.38}
    pre_inf = run(store, home, base_spec("pretrain-infinite", home.root, ["prose-en"],
                                         [{"name": "en", "domains": ["prose-en"], "tokens": T, "rounds": 2,
                                           "schedule": inf1}]))
    raw_rows: list[dict] = []
    for shift in args.shifts.split(","):
        old, new = SHIFTS[shift]
        print(f"{shift} shift: {old} -> {new}", flush=True)

        def stage2(schedule: dict, replay: float, old: str = old, new: str = new) -> list[dict]:
            return [{"name": new, "domains": [new], "tokens": T, "rounds": 4, "schedule": schedule,
                     "replay": {"fraction": replay, "sources": [old]}}]

        conds: dict[str, str] = {}
        ckpt = last_checkpoint(store, pre_cos)
        conds["constant (no re-warm)"] = run(store, home, base_spec(
            f"{shift}-constant", home.root, [old, new], stage2({"kind": "constant", "peak_lr": MIN}, 0.0), ckpt))
        for pct in (0, 1, 5, 25):
            conds[f"re-warm + re-decay, {pct}% replay"] = run(store, home, base_spec(
                f"{shift}-rewarm-{pct}", home.root, [old, new], stage2(cosine(), pct / 100), ckpt))
        inf2 = {"kind": "infinite", "peak_lr": inf1["const_lr"], "const_lr": inf1["const_lr"], "min_lr": MIN,
                "warmup": 0.0, "cooldown": 0.0, "constant": 0.8}
        conds[f"infinite, {PAPER_REPLAY[shift]:.0%} replay"] = run(store, home, base_spec(
            f"{shift}-infinite", home.root, [old, new], stage2(inf2, PAPER_REPLAY[shift]),
            last_checkpoint(store, pre_inf)))
        conds["union from scratch"] = run(store, home, base_spec(
            f"{shift}-union", home.root, [old, new],
            [{"name": "union", "domains": [old, new], "tokens": 2 * T, "rounds": 8, "schedule": cosine(),
              "mixer": {"kind": "static", "weights": {old: 0.5, new: 0.5}}}]))

        print(f"\n| {shift} shift ({old} -> {new}) | {old} | {new} | average | forgetting ({old}) "
              f"| tokens | wall s |\n|---|---|---|---|---|---|---|")
        series = {"stage 1 (shared, cosine)": curve(store, pre_cos)}
        for label, rid in conds.items():
            s = summary(store, rid, [old, new])
            union = label.startswith("union")
            tokens, wall = stage_stats(store, rid, 0)
            raw_rows.append({"shift": shift, "condition": label, "run_id": rid, "final": s["final"],
                             "average": s["average"], "forgetting": s["forgetting"], "stage_tokens": tokens,
                             "wall_s": wall})
            forget = "n/a" if s["forgetting"] is None else f"{s['forgetting'][old]:+.3f}"
            print(f"| {label} | {s['final'][old]:.3f} | {s['final'][new]:.3f} | {s['average']:.3f} | {forget} "
                  f"| {tokens:,}{'' if union else ' (+' + format(T, ',') + ' stage 1)'} | {wall:.0f} |")
            offset = 0 if union else T
            series[label] = [{**p, "tokens": p["tokens"] + offset} for p in curve(store, rid)]
        out = ROOT / "benchmarks" / "results" / f"cpt_paper_{shift}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        import matplotlib.pyplot as plt

        plt.close(plot_curves(series, [old, new], out, f"{shift} shift: validation loss over tokens"))
        print(f"\nplot: {out.relative_to(ROOT)}", flush=True)
    cluster.shutdown()
    import json

    (ROOT / "benchmarks" / "results" / "cpt_paper.json").write_text(json.dumps(
        {"date": str(date.today()), "tokens_per_stage": T, "rows": raw_rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
