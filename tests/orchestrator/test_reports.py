import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.reports import compare, curve, stage_summary, summary, write_report
from store.records import RoundPlan, RoundResult
from store.runs import RunStore

ROOT = Path(__file__).resolve().parents[2]


def _record(store: RunStore, spec: dict, rounds: list[tuple[int, dict, dict | None]]) -> str:
    """A finished run with hand-made rounds: (stage, eval losses, eval before)."""
    run_id = store.create_run(spec["name"], "name: x", spec, "/w", [(s["name"], 0, 10, 1) for s in spec["stages"]])
    store.set_run_status(run_id, "running")
    for i, (stage, losses, before) in enumerate(rounds):
        plan = RoundPlan(run_id=run_id, stage_index=stage, round_index=i, attempt=1, seed=0,
                         weights={"a": 0.5, "b": 0.5}, domain_paths={}, eval_domains=["a", "b"],
                         stage_step_start=0, num_steps=2, stage_steps=2, global_step_start=2 * i,
                         schedule={"kind": "cosine"}, model={}, tokenizer_hash="h", vocab_size=300, seq_len=8,
                         batch_size=2, optimizer={}, init_checkpoint=None, load_optimizer=False, checkpoint_dir="/c",
                         eval_batches=1)
        rid = store.plan_round(plan, {}, None)
        store.start_round(rid)
        store.finish_round(rid, RoundResult(checkpoint="/c", eval_losses=losses, eval_before=before,
                                            train_losses=[3.0, 2.0], domain_train_losses={}, lrs=[1e-3, 5e-4],
                                            tokens=100, domain_tokens={}, tokens_per_s=50.0, wall_s=2.0))
    store.set_run_status(run_id, "finished")
    return run_id


@pytest.fixture
def runs(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path}/store.db")
    two_stage = {"name": "cont", "model": {}, "stages": [{"name": "s1", "domains": ["a"]},
                                                         {"name": "s2", "domains": ["b"]}]}
    cont = _record(store, two_stage, [(0, {"a": 3.0, "b": 6.0}, {"a": 8.0, "b": 8.0}),
                                      (1, {"a": 3.5, "b": 4.0}, None)])
    union = _record(store, {"name": "union", "model": {}, "stages": [{"name": "u", "domains": ["a", "b"]}]},
                    [(0, {"a": 3.2, "b": 4.2}, {"a": 8.0, "b": 8.0})])
    return store, cont, union, tmp_path


def test_summary_forgetting_and_compute(runs):
    store, cont, union, _ = runs
    s = summary(store, cont)
    assert s["final"] == {"a": 3.5, "b": 4.0} and s["average"] == pytest.approx(3.75)
    assert s["forgetting"] == {"a": pytest.approx(0.5)}  # a rose from 3.0 (end of s1) to 3.5
    assert s["tokens"] == 200 and s["wall_s"] == 4.0
    assert summary(store, union)["forgetting"] is None  # one stage from scratch: nothing to forget
    assert [p["tokens"] for p in curve(store, cont)] == [0, 100, 200]
    rows = compare(store, [cont, union])
    assert [r["name"] for r in rows] == ["cont", "union"] and rows[1]["average"] == pytest.approx(3.7)
    assert [r["point"] for r in stage_summary(store, cont)] == ["start", "after s1", "after s2"]


def test_report_is_self_contained_html(runs):
    store, cont, _, tmp = runs
    html = write_report(store, cont, tmp / "r.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "+0.5000" in html and "<script" not in html


def test_compare_and_report_cli(runs):
    store, cont, union, tmp = runs
    env = {**os.environ, "CPT_HOME": str(tmp), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "cli.main", "compare", cont, union, "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [r["run_id"] for r in json.loads(out.stdout)] == [cont, union]
    out = subprocess.run([sys.executable, "-m", "cli.main", "report", cont, "-o", str(tmp / "x.html")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and (tmp / "x.html").exists()
    out = subprocess.run([sys.executable, "-m", "cli.main", "compare", "missing-run"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no run 'missing-run'" in out.stderr


def test_report_embeds_the_redacted_spec(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path}/store.db")
    spec = {"name": "sec", "model": {}, "stages": [{"name": "s1", "domains": ["a"], "tokens": 4096}],
            "tracking": {"mlflow_uri": "https://alice:s3cret@mlflow.example/"}}
    run_id = _record(store, spec, [(0, {"a": 3.0, "b": 6.0}, {"a": 8.0, "b": 8.0})])
    page = write_report(store, run_id, tmp_path / "r.html").read_text()
    assert "s3cret" not in page and "alice:***@mlflow.example" in page and "tokens: 4096" in page


def test_lr_plot_samples_the_schedule_whatever_the_token_budget(tmp_path, synth):
    from orchestrator.plots import plot_lr, run_lrs, sampled_lrs
    from orchestrator.spec import parse_spec
    from tests_helpers import dump

    spec = parse_spec(dump(synth))
    steps, lrs = sampled_lrs(spec)
    assert steps == list(range(spec.total_steps())) and lrs == run_lrs(spec)  # small runs: every step
    big = parse_spec(dump(synth, stages=[{"name": "s1", "domains": ["en"], "tokens": 32 * 4 * 9_000_000}]))
    steps, lrs = sampled_lrs(big)
    assert len(steps) <= 4005 and steps[0] == 0 and steps[-1] == big.total_steps() - 1
    assert plot_lr(big, tmp_path / "lr.png").stat().st_size > 0


def test_the_mixture_plot_of_5000_rounds_is_bounded(tmp_path):
    """A stacked bar per round made a 5,000-round run's mixture.png ~300,000 pixels wide, redrawn
    after every round; past 60 rounds it is an area plot of fixed size."""
    import time

    from PIL import Image

    from orchestrator.plots import plot_mixture

    rounds = [{"label": f"s0r{r}", "weights": {"en": 0.5 + 0.4 * (r % 7) / 7, "de": 0.5 - 0.4 * (r % 7) / 7}}
              for r in range(5000)]
    t0 = time.monotonic()
    path = plot_mixture(rounds, tmp_path / "mixture.png")
    seconds = time.monotonic() - t0
    width, height = Image.open(path).size
    assert width <= 1500 and height <= 500 and seconds < 20, (width, height, seconds)
    small = plot_mixture(rounds[:8], tmp_path / "small.png")  # a short run keeps its bars
    assert Image.open(small).size[0] < width
