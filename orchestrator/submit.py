"""Recording a run, and changing one that is stopped: what happens before a controller drives it."""

from __future__ import annotations

import json

from orchestrator.home import Home
from orchestrator.spec import RunSpec, parse_spec
from store.runs import RunStore


def create_run(store: RunStore, home: Home, spec: RunSpec, spec_yaml: str) -> str:
    """Record a validated spec as a pending run with its stages."""
    starts = spec.stage_starts()
    stages = [(st.name, starts[i], spec.stage_steps(i), st.rounds) for i, st in enumerate(spec.stages)]
    return store.create_run(spec.name, spec_yaml, spec.model_dump(mode="json"), str(home.runs), stages)


def resize_run(store: RunStore, run_id: str, workers: int) -> None:
    """Give a stopped run another number of ranks before it resumes (`cpt runs resume --workers`):
    the global batch, the data order and sharded checkpoints do not depend on it. Checked as a
    spec (batch_size must divide); refused while a live controller drives the run."""
    from store.lease import RunBusy, holder_alive

    run = store.get_run(run_id)
    if holder_alive(store, run_id):
        raise RunBusy(f"run {run_id} is driven by a live controller ({run.lease_owner}); stop it before resizing")
    kept = {k: v for k, v in run.spec_json.get("resources", {}).items() if k != "min_workers"}
    spec = {**run.spec_json, "resources": {**kept, "workers": workers}}  # a fixed size, also for an elastic run
    parse_spec(json.dumps(spec), f"run {run_id} spec with resources.workers {workers}")  # SpecError if it cannot be
    before = run.spec_json.get("resources", {}).get("workers", 1)
    store.update_run(run_id, spec_json=spec)
    store.add_event(run_id, f"resources.workers {before} -> {workers}")
