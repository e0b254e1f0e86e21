"""Data-path costs, measured on this machine (raw JSON: benchmarks/results/data.json).

1. prepare_vs_tokenizers: `cpt data prepare` tokens/s (read, split into documents, tokenize,
   write shards and manifest) over HF tokenizers' own `encode_batch` on all cores, same documents
   (already in memory) and tokenizer. Target >= 0.8.
2. sampler_vs_train: batches/s the sampler serves (RoundSampler.batch, the example spec's
   16 x 129 tokens) over optimizer steps/s of the example model (demo.yaml's 2M-parameter model)
   in a bare loop on the same batches. Target >= 50.
   Also the peak RSS of a process that prepares the same file (streaming: it should not grow
   with the file; the file is read a line or a 1 MB block at a time).
3. rss_mb: peak RSS of a fresh process that samples 1,000 batches from synthetic domains of 10M,
   100M and 1B tokens. Target: flat, within 1.2x from the smallest to the largest. The large
   domains are 5M-token shards hard-linked many times (one file on disk): the sampler's own state
   (offset table, per-epoch permutation) is what grows with the corpus, and that is what is
   measured; page-cache residency of a real 4 GB corpus would differ.

4. ray_vs_local: `cpt data prepare --engine ray` tokens/s over `--engine local`, the same input
   (>= 200 MB of text in 50 files) on this machine's cores (both engines use both). Target >= 0.9.
   ray_scaling: a projection to 16 nodes from the measured per-actor rate and Ray Data's
   per-block overhead (formula in the JSON).

    python benchmarks/data.py [--quick] [--only prepare,sampler,rss,ray]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARD = 5_000_000


def corpus_text(out: Path, chars: int) -> Path:
    """Real text: the standard library's source files, separated by blank lines, up to `chars`."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for p in sorted(lib.rglob("*.py")):
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            f.write(text.strip() + "\n\n")
            n += len(text)
            if n >= chars:
                break
    return out


def bench_prepare(work: Path, chars: int) -> dict:
    from corpus.ingest import prepare_domain
    from corpus.sources import iter_documents
    from corpus.tokenizer import load_tokenizer, train_tokenizer

    src = corpus_text(work / "corpus.txt", chars)
    tok_path = work / "tokenizer.json"
    train_tokenizer(iter_documents(src), tok_path, vocab_size=8192)
    tok = load_tokenizer(tok_path)
    docs = list(iter_documents(src))
    t0 = time.perf_counter()
    base_tokens = 0
    for i in range(0, len(docs), 4096):
        base_tokens += sum(len(e.ids) for e in tok.encode_batch(docs[i:i + 4096]))
    base_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = prepare_domain(src, "code", work / "prepared", tok_path, overwrite=True)
    cpt_s = time.perf_counter() - t0
    cpt_tokens = m["tokens"]["train"] + m["tokens"]["val"] - m["documents"]["train"] - m["documents"]["val"]
    assert cpt_tokens == base_tokens, (cpt_tokens, base_tokens)  # same documents, EOS excluded
    small = corpus_text(work / "quarter.txt", chars // 4)
    rss = {}
    for f in (small, src):
        proc = subprocess.run([sys.executable, "-c", PREPARE_PROBE.format(
            root=str(ROOT), src=str(f), out=str(work / f"probe-{f.stem}"), tok=str(tok_path))],
            capture_output=True, text=True, check=True)
        rss[f"{f.stat().st_size / 1e6:.0f}MB"] = json.loads(proc.stdout.strip())
    return {"mb": round(src.stat().st_size / 1e6, 1), "documents": len(docs), "tokens": base_tokens,
            "tokenizers_tokens_per_s": base_tokens / base_s, "cpt_tokens_per_s": cpt_tokens / cpt_s,
            "ratio": (cpt_tokens / cpt_s) / (base_tokens / base_s), "prepare_rss": rss}


PREPARE_PROBE = """
import json, sys
sys.path.insert(0, {root!r})
from corpus.ingest import prepare_domain
def kb(key):
    return int(dict(l.split(":", 1) for l in open("/proc/self/status"))[key].split()[0])
before = kb("VmRSS")
prepare_domain({src!r}, "probe", {out!r}, {tok!r})
print(json.dumps({{"prepare_rss_before_mb": before / 1024, "prepare_peak_rss_mb": kb("VmHWM") / 1024}}))
"""


def bench_sampler(work: Path, n_batches: int, train_steps: int) -> dict:
    import torch

    from corpus.sampler import RoundSampler, SequenceSource
    from workers.fabric import make_optimizer
    from workers.model import build_model, token_losses

    torch.set_num_threads(os.cpu_count() or 1)
    folder = work / "prepared"
    sources = {"code": SequenceSource.open("code", str(folder), 128)}
    sampler = RoundSampler.fresh(sources, {"code": 1.0}, 16, n_batches)
    t0 = time.perf_counter()
    batches = [sampler.batch(k)[0] for k in range(n_batches)]
    sample_bps = n_batches / (time.perf_counter() - t0)
    vocab = sources["code"].data.manifest["vocab_size"]
    model = build_model({"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 352}, vocab,
                        128, 0)
    opt = make_optimizer(model, {"weight_decay": 0.1, "betas": (0.9, 0.95), "eps": 1e-8})
    for k in range(train_steps + 2):
        if k == 2:  # two warm-up steps (allocator, first AdamW state)
            t0 = time.perf_counter()
        token_losses(model, batches[k % n_batches]).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    train_sps = train_steps / (time.perf_counter() - t0)
    return {"sampler_batches_per_s": sample_bps, "train_steps_per_s": train_sps, "ratio": sample_bps / train_sps}


def synthetic_domain(folder: Path, tokens: int, shard_file: Path) -> None:
    """A domain of `tokens` tokens as hard links of one SHARD-token shard (one file on disk)."""
    from corpus.shards import FORMAT, file_sha256, write_json_atomic

    folder.mkdir(parents=True)
    sha = file_sha256(shard_file)
    shards = []
    for i in range(tokens // SHARD):
        os.link(shard_file, folder / f"train-{i:05d}.arrow")
        shards.append({"file": f"train-{i:05d}.arrow", "split": "train", "tokens": SHARD, "sha256": sha})
    os.link(shard_file, folder / "val-00000.arrow")
    shards.append({"file": "val-00000.arrow", "split": "val", "tokens": SHARD, "sha256": sha})
    write_json_atomic(folder / "manifest.json", {
        "format": FORMAT, "domain": folder.name, "tokenizer_hash": "synthetic", "vocab_size": 8192, "eos_id": 0,
        "documents": {"train": 0, "val": 0}, "tokens": {"train": tokens // SHARD * SHARD, "val": SHARD},
        "shards": shards})


PROBE = """
import json, sys, time
sys.path.insert(0, {root!r})
from corpus.sampler import RoundSampler, SequenceSource
src = SequenceSource.open("d", {folder!r}, 128)
s = RoundSampler.fresh({{"d": src}}, {{"d": 1.0}}, 16, 1000)
t0 = time.perf_counter()
for k in range(1000):
    s.batch(k)
dt = time.perf_counter() - t0
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
kb = lambda key: int(status[key].split()[0])
print(json.dumps({{"sequences": src.n, "batches_per_s": 1000 / dt, "peak_rss_mb": kb("VmHWM") / 1024,
       "rss_anon_mb": kb("RssAnon") / 1024, "rss_file_mb": kb("RssFile") / 1024}}))
"""


def bench_rss(work: Path, sizes: list[int]) -> dict:
    import numpy as np
    import pyarrow as pa

    shard = work / "shard.arrow"
    table = pa.table({"tokens": pa.array(np.random.default_rng(0).integers(1, 8192, SHARD, dtype=np.int32))})
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=1 << 20)
    out = {}
    for tokens in sizes:
        folder = work / f"synthetic-{tokens}"
        synthetic_domain(folder, tokens, shard)
        proc = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), folder=str(folder))],
                              capture_output=True, text=True, check=True)
        out[f"{tokens:.0e}".replace("e+0", "e").replace("e+", "e")] = json.loads(proc.stdout.strip())
    return out


RAY_PROBE = """
import json, os, sys, time
sys.path.insert(0, {root!r})
os.environ["CPT_DASHBOARD"] = "0"
from orchestrator import cluster
from orchestrator.home import Home
from corpus.prepare_ray import prepare_ray
t0 = time.perf_counter()
cluster.connect(Home.from_env({home!r}), dashboard=False)
start_s = time.perf_counter() - t0
out = {{"ray_start_s": start_s}}
for name, workers, block in {runs!r}:
    t0 = time.perf_counter()
    m = prepare_ray([{src!r}], "ray", {out!r} + name, {tok!r}, workers=workers, block_chars=block)
    s = time.perf_counter() - t0
    out[name] = {{"s": s, "tokens": m["tokens"]["train"] + m["tokens"]["val"], "shards": len(m["shards"]),
                  "workers": workers, "block_chars": block}}
print(json.dumps(out))
"""


def _probe(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_ray(work: Path, mb: int) -> dict:
    """The same corpus through both engines, each in a fresh process (the Ray one starts an
    embedded Ray with all cores first, timed apart)."""
    from corpus.ingest import prepare_domain
    from corpus.sources import iter_documents
    from corpus.tokenizer import train_tokenizer

    base = corpus_text(work / "ray-base.txt", mb * 1_000_000 // 50)
    tok = work / "ray-tokenizer.json"
    train_tokenizer(iter_documents(base), tok, vocab_size=8192)
    text = base.read_text()
    src = work / "ray-corpus"
    src.mkdir()
    for i in range(50):  # copies told apart by a first line (the split is by text: no copy is a duplicate)
        (src / f"part-{i:03d}.txt").write_text("".join(f"# part {i}\n{d}\n\n" for d in text.split("\n\n") if d))
    size = sum(p.stat().st_size for p in src.iterdir())
    t0 = time.perf_counter()
    m = prepare_domain(src, "local", work / "ray-local", tok)
    local_s = time.perf_counter() - t0
    tokens = m["tokens"]["train"] + m["tokens"]["val"]
    tiny = work / "tiny-input"  # 200 files of 5 KB: a read task and a block each (Ray Data merges a task's output)
    tiny.mkdir()
    for i in range(200):
        (tiny / f"t{i:03d}.txt").write_text(text[i * 5000:(i + 1) * 5000])
    runs = [("two", 2, 4 << 20), ("one", 1, 4 << 20)]
    ray = _probe(RAY_PROBE.format(root=str(ROOT), home=str(work / "ray-home"), runs=runs, src=str(src),
                                  out=str(work / "ray-"), tok=str(tok)))
    small = _probe(RAY_PROBE.format(root=str(ROOT), home=str(work / "ray-home2"),
                                    runs=[("tiny", 1, 2_000), ("tinybig", 1, 4 << 20)], src=str(tiny),
                                    out=str(work / "ray-"), tok=str(tok)))
    assert ray["two"]["tokens"] == tokens, (ray["two"]["tokens"], tokens)  # the same documents, tokens
    local_rate, ray_rate = tokens / local_s, tokens / ray["two"]["s"]
    actor_rate = tokens / ray["one"]["s"]
    per_block = max(small["tiny"]["s"] - small["tinybig"]["s"], 0) / 199  # 200 blocks vs 1
    # a 4 MB block is ~1M tokens here: each block costs 1M / actor_rate of tokenizing plus per_block
    block_tokens = tokens / max(ray["two"]["shards"] / 2, 1)
    efficiency = (block_tokens / actor_rate) / (block_tokens / actor_rate + per_block)
    nodes, cores = 16, 32
    projected = nodes * cores * actor_rate * efficiency
    return {"mb": round(size / 1e6, 1), "files": 50, "tokens": tokens, "local_tokens_per_s": local_rate,
            "ray_tokens_per_s": ray_rate, "ray_start_s": ray["ray_start_s"], "ray_vs_local": ray_rate / local_rate,
            "actor_tokens_per_s": actor_rate, "per_block_overhead_s": per_block, "runs": {**ray, **small},
            "ray_scaling": {
                "formula": "tokens/s = nodes * cores * actor_rate * eff; eff = t_block / (t_block + overhead), "
                           "t_block = block_tokens / actor_rate (storage bandwidth assumed not to bind: "
                           "~4 bytes of text per token, i.e. 4 * tokens/s bytes/s read, shards ~1 byte/token "
                           "written)",
                "nodes": nodes, "cores_per_node": cores, "actor_tokens_per_s": actor_rate,
                "block_tokens": block_tokens, "per_block_overhead_s": per_block, "efficiency": efficiency,
                "projected_tokens_per_s": projected, "hours_for_250B_tokens": 250e9 / projected / 3600,
                "read_gb_per_s": 4 * projected / 1e9}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Smaller inputs (a smoke run, not for the README).")
    ap.add_argument("--only", choices=["all", "ray"], default="all",
                    help="ray: only section 4 (the others keep their values in the JSON).")
    args = ap.parse_args()
    out = ROOT / "benchmarks" / "results" / ("data-quick.json" if args.quick else "data.json")
    if args.only == "all":
        run_all(args.quick, out)
    with tempfile.TemporaryDirectory(prefix="cpt-bench-data-") as tmp:
        ray = bench_ray(Path(tmp), 20 if args.quick else 200)
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(ray_vs_local=ray["ray_vs_local"], ray_scaling=ray["ray_scaling"],
                  ray_date=date.today().isoformat())
    result.setdefault("details", {})["ray"] = ray
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: ray[k] for k in ("ray_vs_local", "ray_tokens_per_s", "local_tokens_per_s",
                                          "per_block_overhead_s")}, indent=2))


def run_all(quick: bool, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="cpt-bench-data-") as tmp:
        work = Path(tmp)
        prepare = bench_prepare(work, 2_000_000 if quick else 40_000_000)
        print("prepare", json.dumps(prepare))
        sampler = bench_sampler(work, 200 if quick else 1000, 10 if quick else 40)
        print("sampler", json.dumps(sampler))
        sizes = [10_000_000, 100_000_000] if quick else [10_000_000, 100_000_000, 1_000_000_000]
        rss = bench_rss(work, sizes)
        print("rss", json.dumps(rss))
    peaks = [v["peak_rss_mb"] for v in rss.values()]
    result = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "quick": quick, "prepare_vs_tokenizers": prepare["ratio"], "sampler_vs_train": sampler["ratio"],
        "rss_mb": {k: v["peak_rss_mb"] for k, v in rss.items()}, "rss_growth": max(peaks) / min(peaks),
        "prepare_peak_rss_mb": {k: v["prepare_peak_rss_mb"] for k, v in prepare["prepare_rss"].items()},
        "details": {"prepare": prepare, "sampler": sampler, "rss": rss},
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("prepare_vs_tokenizers", "sampler_vs_train", "rss_mb",
                                              "rss_growth")}, indent=2))


if __name__ == "__main__":
    main()
