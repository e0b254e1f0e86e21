"""Where the CPU goes while a 2-rank cpt round trains: per-process shares from /proc.

`cpt submit` of one round of a 25M-parameter model on 2 ranks (DDP, gloo, 1 CPU each, the model of
scale.py's DDP rows); once the group trains, every process's CPU time is sampled twice, `--window`
seconds apart. On a 2-core machine the two ranks want both cores, so whatever else runs (Ray
Train's helper actors, cpt's mailbox and driver, Ray's daemons, the dashboard) comes out of their
share: this is what the DDP ratio in benchmarks/README.md is read against.

    python benchmarks/cpu_share.py [--wait 45] [--window 30]   -> benchmarks/results/cpu_share.json
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
MODEL = {"hidden_size": 512, "num_layers": 7, "num_heads": 8, "intermediate_size": 1376}  # scale.py's 25M


def snapshot() -> dict[int, tuple[str, int, float]]:
    """pid -> (name, niceness, CPU seconds so far) for every readable process."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name, fields = stat.split("(", 1)[1].rsplit(")", 1)
        f = fields.split()
        out[int(pid)] = ((cmd.strip() or name)[:90], int(f[16]), (int(f[11]) + int(f[12])) / tick)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wait", type=float, default=45, help="seconds from submit until the ranks train")
    ap.add_argument("--window", type=float, default=30)
    args = ap.parse_args()
    from orchestrator.home import Home

    home = Path(tempfile.mkdtemp(prefix="cpt-bench-cpu-", dir="/tmp"))
    shared = Home.from_env(ROOT / "cpt-home")  # the demo's prepared data (`make demo` prepares it)
    (home / "data").mkdir()
    os.symlink(shared.data / "prose-en", home / "data" / "prose-en")
    os.symlink(shared.tokenizer, home / "tokenizer.json")
    steps = 80  # longer than wait + window at ~2 s a step
    spec = {"name": "cpu", "seed": 0, "tokenizer": str(home / "tokenizer.json"), "seq_len": 128, "batch_size": 16,
            "model": MODEL, "domains": {"prose-en": str(home / "data" / "prose-en")},
            "stages": [{"name": "s", "domains": ["prose-en"], "tokens": steps * 16 * 128, "rounds": 1,
                        "schedule": {"kind": "cosine", "peak_lr": 1e-3, "min_lr": 1e-4, "warmup": 0.0}}],
            "eval_batches": 1, "resources": {"workers": 2, "cpus_per_worker": 1}}
    (home / "cpu.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "CPT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "submit", str(home / "cpu.yaml"), "--quiet"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(args.wait)
        a, t0 = snapshot(), time.time()
        time.sleep(args.window)
        b, dt = snapshot(), time.time() - t0
    finally:
        proc.terminate()  # SIGTERM: the run is recorded interrupted, its Ray stops with it
        proc.wait(timeout=120)
    rows = sorted(({"pid": pid, "name": name, "nice": ni, "share": (cpu - a[pid][2]) / dt}
                   for pid, (name, ni, cpu) in b.items() if pid in a and cpu - a[pid][2] > 0.01),
                  key=lambda r: -r["share"])
    ranks = [r for r in rows if "RayTrainWorker" in r["name"]]
    result = {"date": str(date.today()), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
              "window_s": dt, "ranks_share": sum(r["share"] for r in ranks),
              "others_share": sum(r["share"] for r in rows if r not in ranks), "processes": rows}
    for r in rows[:20]:
        print(f"{100 * r['share']:6.1f}%  nice {r['nice']:3d}  {r['name'][:70]}")
    print(f"ranks {100 * result['ranks_share']:.0f}% of a core in all, everything else "
          f"{100 * result['others_share']:.0f}% ({len(rows) - len(ranks)} processes)")
    out = ROOT / "benchmarks" / "results" / "cpu_share.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
