"""A run of 5,000 rounds: what users look at stays fast (`cpt runs show`, `list`, `compare`,
`report`). The store is filled synthetically (one bulk insert of finished rounds with realistic
plans and results), so the test measures the commands, not training."""

from __future__ import annotations

import dataclasses
import json
import time

import yaml
from sqlalchemy import insert

from conftest import tiny_spec
from orchestrator.home import Home
from orchestrator.spec import parse_spec
from orchestrator.submit import create_run
from store.models import Round
from store.runs import RunStore
from tests_helpers import cpt, round_plan, round_result

ROUNDS = 5000
BOUND_S = 15.0  # per command on 2 cores, CLI start (~1.5 s) included; the table alone took 7-18 s before


def test_show_list_compare_and_report_stay_fast_at_5000_rounds(tmp_path, synth):
    raw = tiny_spec(synth, stages=[{"name": "s1", "domains": ["en", "de"], "tokens": 32 * 4 * 30 * ROUNDS,
                                    "rounds": ROUNDS}])
    text = yaml.safe_dump(raw)
    home = Home.from_env(tmp_path / "home")
    store = RunStore(home.store_url)
    run_id = create_run(store, home, parse_spec(text), text)
    store.set_run_status(run_id, "running")
    res = dataclasses.replace(round_result(), eval_losses={"en": 3.0, "de": 4.0}, train_losses=[3.0] * 30,
                              lrs=[1e-3] * 30, domain_train_losses={"en": 3.0, "de": 4.0})
    rows = []
    for r in range(ROUNDS):
        p = dataclasses.replace(round_plan(run_id, 0, r), weights={"en": 0.5, "de": 0.5}, num_steps=30,
                                global_step_start=30 * r, stage_step_start=30 * r, stage_steps=30 * ROUNDS,
                                cursors={d: {"epoch": 0, "pos": 60 * r, "data": d} for d in ("en", "de")})
        r_ = dataclasses.replace(res, eval_losses={"en": 3.0 - r * 1e-4, "de": 4.0 - r * 1e-4},
                                 cursors={d: {"epoch": 0, "pos": 60 * r + 60, "data": d} for d in ("en", "de")})
        rows.append({"run_id": run_id, "stage_index": 0, "round_index": r, "attempt": 1, "status": "finished",
                     "weights": p.weights, "step_start": 30 * r, "step_end": 30 * r + 30, "lr_segment": {},
                     "plan_json": p.to_json(), "result_json": r_.to_json(), "eval_losses": r_.eval_losses,
                     "train_loss": 3.0, "tokens": r_.tokens, "tokens_per_s": 10.0, "checkpoint_uri": f"/c/{r}"})
    with store._tx() as s:
        s.execute(insert(Round), rows)
    store.set_run_status(run_id, "finished")

    def timed(*args):
        t0 = time.monotonic()
        out = cpt(home.root, *args, timeout=120)
        assert out.returncode == 0, (args, out.stderr[-2000:])
        return out.stdout, time.monotonic() - t0

    shown, s1 = timed("runs", "show", run_id)
    assert f"the last 50 of {ROUNDS:,} attempts" in shown and "4999" in shown
    full, s2 = timed("runs", "show", run_id, "--json")
    assert len(json.loads(full)["rounds"]) == ROUNDS
    _, s3 = timed("runs", "list")
    _, s4 = timed("compare", run_id)
    _, s5 = timed("report", run_id, "-o", str(tmp_path / "report.html"))
    assert max(s1, s2, s3, s4, s5) < BOUND_S, (s1, s2, s3, s4, s5)
