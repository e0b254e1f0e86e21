"""Costs that must not grow with a run's length or its corpus.

Controller time per round (orchestrator/controller.py and everything it calls between rounds:
planning, the observation, the store's commit with its transition, retention, MLflow tracking)
over the last 100 rounds of a 5,000-round run and of a 110-round one (rounds 10-110). The first
rounds of each run are written to a real store by the pure planner with the store's own API
(plan, start, finish: what a run writes), then a real
Controller resumes the run for its last 100 rounds with MLflow tracking on, against a worker group
that answers each plan at once with a result the planner's sampler computes (end cursors exact):
the seconds are the controller's own, not training's. `controller_s_ratio` is the mean seconds per
round near round 5,000 over rounds 10-110 (target <= 1.5): a mean over 100 rounds, so costs paid
every k rounds (the plots' redraw) count amortized.

Replay fill (corpus/replay.py): a reservoir of a fixed token budget filled from a stage that read
10M and 200M tokens of a synthetic domain (row i is i repeated; nothing on disk, so the numbers are
the fill's own). Peak traced memory (tracemalloc: numpy's buffers included) and seconds for each;
`replay_rss_ratio` is the 200M peak over the 10M peak (target <= 1.2: memory follows the buffer,
not the stage). Raw JSON: benchmarks/results/long_run.json.

    python benchmarks/long_run.py [--rounds 5000]
"""

from __future__ import annotations

import json
import platform
import sys
import time
import tracemalloc
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WINDOW = 129  # seq_len 128 + the shifted target
BUFFER_TOKENS = 8_000_000


class Synthetic:
    """A domain of `n` sequences whose row i is i repeated: any size, no bytes."""

    name, data_id = "big", "synthetic"

    def __init__(self, n: int):
        self.n, self.read = n, 0

    def rows(self, ids):
        self.read += len(ids)
        return np.repeat(np.asarray(ids, dtype=np.int64)[:, None], WINDOW, axis=1)


def replay_fill(stage_tokens: int) -> dict:
    from corpus.order import advance, new_cursor
    from corpus.replay import ReplayBuffer, stage_stream

    source = Synthetic(stage_tokens // WINDOW)
    start = new_cursor(source.data_id)
    buf = ReplayBuffer("unused", BUFFER_TOKENS, WINDOW)
    tracemalloc.start()
    t0 = time.perf_counter()
    buf.add(stage_stream(source, start, advance(start, source.n, source.n), seed=0), np.random.default_rng(0))
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"stage_tokens": stage_tokens, "sequences": source.n, "buffer_tokens": buf.tokens(),
            "rows_read": source.read, "peak_traced_mb": peak / 1e6, "seconds": seconds,
            "stacked_stream_mb": source.n * WINDOW * 4 / 1e6}


class InstantGroup:
    """A worker group that answers each plan at once: the result the ranks would report, with the
    sampler's exact end cursors and made-up losses (nothing trains)."""

    alive = True

    def __init__(self):
        self.seq, self.plan = -1, None

    def submit(self, plan) -> int:
        self.seq, self.plan = self.seq + 1, plan
        return self.seq

    def poll(self, timeout: float, saving: int | None = None):
        return [], synthetic_result(self.plan), None

    def stop(self, timeout: float = 30) -> None:
        pass

    def kill(self) -> None:
        pass


def _groups():
    from orchestrator.group import Groups

    class InstantGroups(Groups):
        def get(self, run_id, res, storage, report):
            return InstantGroup()

        def release(self, group, kill):
            pass

    return InstantGroups()


def synthetic_result(plan):
    from corpus.sampler import RoundSampler, SequenceSource
    from store.records import RoundResult

    live = {d: SequenceSource.open(d, plan.domain_paths[d], plan.seq_len) for d, w in plan.weights.items() if w}
    sampler = RoundSampler(live, plan.weights, plan.cursors, plan.batch_size, plan.num_steps, plan.seed,
                           plan.stage_index, plan.round_index)
    k, tokens = plan.global_step_start, plan.batch_size * plan.seq_len * plan.num_steps
    losses = {d: 5.0 / (1 + 1e-3 * k) + 0.1 * i for i, d in enumerate(plan.eval_domains)}
    return RoundResult(checkpoint=plan.checkpoint_dir, eval_losses=losses, eval_before=losses,
                       train_losses=[5.0 / (1 + 1e-3 * k)] * plan.num_steps, domain_train_losses=losses,
                       lrs=[1e-3] * plan.num_steps, tokens=tokens,
                       domain_tokens={d: tokens // len(live) for d in live}, tokens_per_s=1e6, wall_s=0.01,
                       cursors=sampler.end_cursors(), fit_s=0.01, round_s=0.01)


def _domains(work: Path) -> tuple[Path, dict[str, Path]]:
    from corpus.ingest import prepare_domain
    from corpus.tokenizer import train_tokenizer

    rng = np.random.default_rng(0)
    words = {"a": ["alpha", "beta", "gamma", "delta"], "b": ["uno", "dos", "tres", "cuatro"]}
    docs = {d: [" ".join(rng.choice(w, 40)) for _ in range(400)] for d, w in words.items()}
    tok = work / "tokenizer.json"
    train_tokenizer((t for d in docs.values() for t in d), tok, 300)
    out = {}
    for d, texts in docs.items():
        (work / f"{d}.txt").write_text("\n\n".join(texts))
        out[d] = work / "data" / d
        prepare_domain(work / f"{d}.txt", d, out[d], tok, doc_sep="\n\n", val_fraction=0.1)
    return tok, out


def controller_rounds(work: Path, rounds: int, measured: int = 100) -> dict:
    """Seconds per round the controller spends on the last `measured` rounds of a `rounds`-round run."""
    import yaml

    from mixers.base import build_mixer
    from orchestrator.controller import Controller, SilentReporter
    from orchestrator.data_check import check_data
    from orchestrator.home import Home
    from orchestrator.planner import DataInfo, Finished, RoundPlanner
    from orchestrator.spec import parse_spec
    from orchestrator.submit import create_run
    from store.runs import RunStore

    tok, domains = _domains(work)
    raw = {"name": f"long{rounds}", "seed": 0, "tokenizer": str(tok), "seq_len": 16, "batch_size": 2,
           "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
           "domains": {d: str(p) for d, p in domains.items()}, "eval_batches": 1,
           "stages": [{"name": "s", "domains": ["a", "b"], "tokens": 16 * 2 * rounds, "rounds": rounds,
                       "mixer": {"kind": "temperature", "temperature": 2.0}}],
           "checkpoints": {"asynchronous": False, "keep_last": 3}}
    text = yaml.safe_dump(raw)
    spec = parse_spec(text)
    home = Home.from_env(work / "home")
    store = RunStore(home.store_url)
    run_id = create_run(store, home, spec, text)
    workdir = Path(store.get_run(run_id).workdir)
    manifests = check_data(spec)
    from orchestrator import checkpoints

    planner = RoundPlanner(spec, run_id, workdir, DataInfo.from_manifests(manifests),
                           lambda name: checkpoints.location(spec, workdir, run_id, name))
    mixer = build_mixer(spec.stages[0].mixer)
    from corpus.sampler import SequenceSource
    from orchestrator.planner import DomainSize

    sizes = {d: SequenceSource.open(d, str(p), spec.seq_len) for d, p in domains.items()}
    done: list[Finished] = []
    t0 = time.perf_counter()
    for r in range(rounds - measured):  # what the rounds before would have written, through the store's API
        obs = planner.observation(0, r, done, {})
        weights = planner.propose(mixer, obs)
        plan = planner.plan(0, r, weights, 1, done, lambda d: DomainSize(sizes[d].n, sizes[d].data_id,
                                                                        str(domains[d])))
        rid = store.plan_round(plan, planner.lr_segment(plan), mixer.state_dict())
        store.start_round(rid)
        result = synthetic_result(plan)
        store.finish_round(rid, result, planner.commit(obs, weights, result, "temperature"))
        store.set_round_mlflow(rid, "prefilled")  # tracked already: a resume does not log them again
        done.append(Finished(0, r, weights, result.eval_losses, result.checkpoint, plan, result,
                             mixer.state_dict()))
    prefill_s = time.perf_counter() - t0

    class Clock(SilentReporter):
        def __init__(self):
            self.starts: list[float] = []

        def round_started(self, plan, stage):
            self.starts.append(time.perf_counter())

    clock = Clock()
    t0 = time.perf_counter()
    status = Controller(store, home, run_id, clock, tracking=True, groups=_groups(), poll_s=0.0).run()
    total = time.perf_counter() - t0
    assert status == "finished", status
    gaps = np.diff(clock.starts)  # one round each: plan, (instant) result, commit, retention, tracking
    return {"rounds": rounds, "measured_rounds": len(gaps), "seconds_per_round": float(gaps.mean()),
            "max_seconds": float(gaps.max()), "resume_s": total - float(gaps.sum()), "prefill_s": prefill_s}


def main() -> None:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5000)
    ap.add_argument("--skip-replay", action="store_true")
    args = ap.parse_args()
    ctl = []
    for n in (110, args.rounds):  # the last 100 rounds of each: rounds 10-110, and up to 5,000
        with tempfile.TemporaryDirectory(prefix="cpt-long-") as tmp:
            ctl.append(controller_rounds(Path(tmp), n))
        c = ctl[-1]
        print(f"controller, the last 100 rounds of {n}: {c['seconds_per_round'] * 1e3:.0f} ms per round (max "
              f"{c['max_seconds'] * 1e3:.0f} ms; resume {c['resume_s']:.1f} s, prefill {c['prefill_s']:.0f} s)")
    rows = [] if args.skip_replay else [replay_fill(t) for t in (10_000_000, 200_000_000)]
    for r in rows:
        print(f"replay fill from a {r['stage_tokens'] / 1e6:.0f}M-token stage into {r['buffer_tokens'] / 1e6:.1f}M: "
              f"peak {r['peak_traced_mb']:.0f} MB (the stream stacked: {r['stacked_stream_mb']:.0f} MB), "
              f"{r['seconds']:.2f} s, {r['rows_read']:,} rows read")
    path = ROOT / "benchmarks" / "results" / "long_run.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    out.update({"date": str(date.today()), "machine": f"{platform.machine()}, python {platform.python_version()}",
                "controller_s_ratio": ctl[1]["seconds_per_round"] / ctl[0]["seconds_per_round"],
                "controller_rows": ctl})
    if rows:
        out.update({"replay_rss_ratio": rows[1]["peak_traced_mb"] / rows[0]["peak_traced_mb"],
                    "replay_seconds_ratio": rows[1]["seconds"] / rows[0]["seconds"], "rows": rows})
    print(f"controller_s_ratio {out['controller_s_ratio']:.2f} (target <= 1.5); "
          f"replay_rss_ratio {out['replay_rss_ratio']:.2f} (target <= 1.2)")
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
