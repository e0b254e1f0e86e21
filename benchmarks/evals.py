"""Downstream evaluations beside training: what they cost the run (raw JSON: benchmarks/results/evals.json).

The same run twice through the CLI, each with its own embedded Ray: without `evals:` and with a
local multiple-choice task (lm-evaluation-harness) evaluated after every round, sized to take
about a round. Reports:
  - train_ratio: the ranks' training tokens/s (fit time only) with evals over without (target
    >= 0.97: an evaluation runs in its own Ray task on its own CPU while the next round trains);
  - wall_ratio: the run's wall time with evals over without (the last round's evaluation is not
    hidden behind training: the run finishes when its last score is recorded);
  - burn_ratio: the same run without evals but with a niced one-thread matmul loop on another CPU
    the whole time: what any work beside the rank costs it on this machine (the floor for
    train_ratio, whatever the evaluation does).

    python benchmarks/evals.py [--rounds 4] [--steps 40] [--items 400]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BURN = "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a @ a"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CPT_HOME": str(home), "PYTHONPATH": str(ROOT), "CPT_DASHBOARD": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True,
                         timeout=3600)
    if out.returncode:
        raise SystemExit(f"cpt {' '.join(args)}: exit {out.returncode}\n{out.stderr[-3000:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40, help="Steps per round.")
    ap.add_argument("--items", type=int, default=400, help="Multiple-choice items per evaluation.")
    args = ap.parse_args()
    from synth import WORDS, make_domains, mc_task

    out = {}
    with tempfile.TemporaryDirectory(prefix="cpt-bench-evals-") as tmp:
        work = Path(tmp)
        synth = make_domains(work / "synth", langs=("en", "de"), docs=400, vocab=512)
        task = mc_task(work / "task", WORDS, n=args.items)
        spec = {"name": "evals", "seed": 0, "tokenizer": str(synth["tokenizer"]), "seq_len": 64, "batch_size": 8,
                "model": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 352},
                "domains": {k: str(v) for k, v in synth["domains"].items()},
                "stages": [{"name": "de", "domains": ["de"], "tokens": 64 * 8 * args.steps * args.rounds,
                            "rounds": args.rounds,
                            "schedule": {"kind": "cosine", "peak_lr": 3e-3, "min_lr": 3e-4, "warmup": 0.05}}],
                "eval_batches": 2, "resources": {"cpus": 1}, "checkpoints": {"keep_last": 1}}
        for mode in ("off", "burn", "on"):
            home = work / mode
            run = dict(spec, evals=[{"task": str(task), "role": "target"}] if mode == "on" else [])
            (work / f"{mode}.yaml").write_text(yaml.safe_dump(run))
            burner = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", BURN]) if mode == "burn" else None
            t0 = time.perf_counter()
            try:
                cli(home, "submit", str(work / f"{mode}.yaml"), "--quiet")
            finally:
                if burner:
                    burner.kill()
            wall = time.perf_counter() - t0
            run_id = json.loads(cli(home, "runs", "list", "--json").stdout)[0]["id"]
            shown = json.loads(cli(home, "runs", "show", run_id, "--json").stdout)
            rates = [r["tokens_per_s"] for r in shown["rounds"] if r["status"] == "finished"]
            evals = json.loads(cli(home, "runs", "evals", run_id, "--json").stdout) if mode == "on" else []
            out[mode] = {"wall_s": wall, "train_tokens_per_s": sum(rates) / len(rates), "rounds": len(rates),
                         "eval_s": [r["seconds"] for r in evals if r["metric"] == "acc,none"],
                         "acc": [r["value"] for r in evals if r["metric"] == "acc,none"]}
            print(mode, json.dumps(out[mode]))
    result = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "args": vars(args), "train_ratio": out["on"]["train_tokens_per_s"] / out["off"]["train_tokens_per_s"],
              "wall_ratio": out["on"]["wall_s"] / out["off"]["wall_s"],
              "burn_ratio": out["burn"]["train_tokens_per_s"] / out["off"]["train_tokens_per_s"],
              "extra_wall_s": out["on"]["wall_s"] - out["off"]["wall_s"], "runs": out}
    (ROOT / "benchmarks" / "results" / "evals.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("train_ratio", "burn_ratio", "wall_ratio", "extra_wall_s")}, indent=2))


if __name__ == "__main__":
    main()
