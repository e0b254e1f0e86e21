"""`cpt agent explore`: many short proxy CPT trajectories with random mixtures, in parallel on Ray.

Each trajectory is an ordinary cpt run of the given spec whose last stage uses the `dirichlet`
mixer (a fresh random mixture every round) and its own seed, so every decision and its outcome
lands in the run store as a transition, exactly like the rounds of real runs.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import yaml

from orchestrator.controller import Controller, Reporter, create_run
from orchestrator.home import Home
from orchestrator.spec import RunSpec, parse_spec
from store.runs import RunStore


def trajectory_specs(spec: RunSpec, n: int, concentration: float, seed_offset: int = 1000) -> list[str]:
    out = []
    for k in range(n):
        raw = copy.deepcopy(spec.model_dump(mode="json"))
        raw["name"] = f"{spec.name[:40]}-explore{k}"
        raw["seed"] = spec.seed + seed_offset + k
        raw["stages"][-1]["mixer"] = {"kind": "dirichlet", "concentration": concentration, "seed": k}
        # the random mixture sets the replay share itself (replay.fraction would be ignored)
        raw["stages"][-1].setdefault("replay", {})["fraction"] = 0.0
        raw["tracking"] = {**raw["tracking"], "experiment": f"{raw['tracking']['experiment']}-explore"}
        out.append(yaml.safe_dump(raw, sort_keys=False))
    return out


def explore(store: RunStore, home: Home, spec: RunSpec, n: int, concentration: float = 1.0,
            parallel: int = 2, tracking: bool = False, reporter: Reporter | None = None) -> dict[str, str]:
    """Run n trajectories, `parallel` controllers at a time on one Ray cluster; returns run id -> status."""
    from orchestrator import cluster

    ids = [create_run(store, home, parse_spec(text), text) for text in trajectory_specs(spec, n, concentration)]
    cluster.connect(home)  # once, before the controller threads

    def one(run_id: str) -> tuple[str, str]:
        try:
            status = Controller(RunStore(store.url), home, run_id, reporter, tracking=tracking).run()
        except Exception as exc:  # one failed trajectory must not stop the others; it is recorded
            status = f"failed: {exc}"
        if reporter:
            reporter.message(f"trajectory {run_id}: {status}")
        return run_id, status

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return dict(pool.map(one, ids))
