"""How the agent's held-out score moves with training epochs, on the exploration runs of a mixers home.

Reads the exploration trajectories that `benchmarks/mixers.py` stored (runs named *-explore*), then
trains AWR and CQL exactly as the benchmark does and scores the policy on the held-out
trajectories every `--every` epochs (the score `mixers/agent_train.py` selects on). Also prints how
the logged target weight correlates with the per-round reward in those transitions: the signal
there is to learn.

    python benchmarks/agent_selection.py [--home cpt-home/mixers] [--epochs 400] [--every 20]
Writes benchmarks/results/agent-selection.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=ROOT / "cpt-home" / "mixers")
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--every", type=int, default=20)
    args = ap.parse_args()
    import mixers.agent_train as at
    from mixers.agent import FEATURE_VERSION
    from orchestrator.home import Home
    from store.runs import RunStore

    store = RunStore(Home.from_env(args.home).store_url)
    runs = [r.id for r in store.list_runs(1_000_000) if "-explore" in r.name and r.status == "finished"]
    rows = [t for t in store.transitions(feature_version=FEATURE_VERSION, runs=runs) if len(t.action) >= 2]
    signal = {}
    for k in sorted({len(t.action) for t in rows}):
        share = [t.action[0] for t in rows if len(t.action) == k]
        reward = [t.reward for t in rows if len(t.action) == k]
        signal[str(k)] = {"transitions": len(share), "corr_target_weight_reward": statistics.correlation(share, reward)}
    print(f"{len(runs)} trajectories, {len(rows)} transitions; corr(target weight, reward) by K: "
          + ", ".join(f"{k}: {v['corr_target_weight_reward']:+.3f}" for k, v in signal.items()))
    curves = {}
    for method in at.METHODS:
        _, meta = at.train_agent(rows, method=method, epochs=args.epochs, eval_every=args.every)
        curve = json.loads(meta["val_curve"])  # the held-out score at every check, as selection saw it
        curves[method] = {"best_epoch": int(meta["best_epoch"]), "curve": curve}
        print(f"{method}: " + " ".join(f"{e}:{s:+.3f}" for e, s in curve))
    out = ROOT / "benchmarks" / "results" / "agent-selection.json"
    out.write_text(json.dumps({"date": str(date.today()), "home": args.home.name, "trajectories": len(runs),
                               "transitions": len(rows), "signal": signal, "methods": curves}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
