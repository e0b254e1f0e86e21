"""`cpt agent explore`: many short proxy CPT trajectories with random mixtures, in parallel on Ray.

Each trajectory is an ordinary cpt run of the given spec whose last stage uses the `dirichlet`
mixer (a fresh random mixture every round) and its own seed, so every decision and its outcome
lands in the run store as a transition, exactly like the rounds of real runs.

Exploration is resumable: trajectory k of a spec is a run named `<name>-explore<k>` with a
deterministic spec, so running the same command again skips the trajectories that finished,
resumes the ones that stopped (failed, interrupted, cancelled) from their last committed round,
and starts only the missing ones; asking for more trajectories extends the set.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import yaml

from orchestrator.controller import Controller, Reporter
from orchestrator.group import Groups, SharedGroups
from orchestrator.home import Home
from orchestrator.signals import stop_signals
from orchestrator.spec import RunSpec, parse_spec
from orchestrator.submit import create_run
from store.errors import Cancelled, Preempted
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


def _existing(store: RunStore, texts: list[str]) -> dict[int, tuple[str, str]]:
    """Trajectory index -> (run id, status) of runs already recorded with exactly that spec."""
    by_text = {t: k for k, t in enumerate(texts)}
    found: dict[int, tuple[str, str]] = {}
    for run in store.list_runs(1_000_000):  # oldest last: a finished run wins over a newer retry
        k = by_text.get(run.spec_yaml)
        if k is not None and (k not in found or run.status == "finished"):
            found[k] = (run.id, run.status)
    return found


def explore(store: RunStore, home: Home, spec: RunSpec, n: int, concentration: float = 1.0,
            parallel: int = 2, tracking: bool = False, reporter: Reporter | None = None,
            groups: Groups | None = None) -> dict[str, str]:
    """Run n trajectories, `parallel` controllers at a time on one Ray cluster; returns run id -> status
    (trajectories that finished before are reported as finished and not re-run)."""
    from orchestrator import cluster

    texts = trajectory_specs(spec, n, concentration)
    before = _existing(store, texts)
    done = {rid: "finished" for rid, status in before.values() if status == "finished"}
    todo = [k for k in range(n) if k not in before or before[k][1] != "finished"]
    if reporter and before:
        reporter.message(f"{len(done)} of {n} trajectories already finished; "
                         f"{sum(k in before for k in range(n)) - len(done)} resumed, {n - len(before)} new")
    if not todo:
        return done
    cluster.connect(home)  # once, before the controller threads
    # a trajectory takes over a finished one's worker group: no group start each
    own = groups is None
    groups = SharedGroups() if own else groups
    flags: dict[str, bool] = {}  # SIGTERM / Ctrl-C in the main thread reach every controller through it

    def one(k: int) -> tuple[str, str]:
        if flags:  # stopping: trajectories not started yet are not recorded at all
            return f"#{k}", "not started"
        # recorded when its turn comes: -n 3000 does not write 3,000 pending runs up front
        run_id = before[k][0] if k in before else create_run(store, home, parse_spec(texts[k]), texts[k])
        try:
            ctl = Controller(RunStore(store.url), home, run_id, reporter, tracking=tracking, groups=groups)
            ctl.signals = flags
            status = ctl.run()
        except Exception as exc:  # one failed trajectory must not stop the others; it is recorded
            status = f"failed: {exc}"
        if reporter:
            reporter.message(f"trajectory {run_id}: {status}")
        return run_id, status

    try:
        with stop_signals(flags), ThreadPoolExecutor(max_workers=parallel) as pool:
            results = {**done, **dict(pool.map(one, todo))}
    finally:
        if own:
            groups.close()
    if flags.get("preempted"):
        raise Preempted("exploration interrupted by SIGTERM; the same command continues it")
    if flags.get("interrupted"):
        raise Cancelled("exploration cancelled (Ctrl-C); the same command continues it")
    return {k: v for k, v in results.items() if v != "not started"}


def describe_runs(store: RunStore, run_ids: list[str]) -> dict[str, str]:
    """What an agent was trained on, for its metadata: the proxy models' sizes (or paths)."""
    import json

    models = set()
    for rid in run_ids:
        model = store.get_run(rid).spec_json.get("model") or {}
        keys = ("hidden_size", "num_layers", "num_heads", "intermediate_size")
        size = " ".join(f"{k}={model[k]}" for k in keys if model.get(k) is not None)
        # a checkpoint's path names one run: "continued" keeps equal proxies as one entry
        models.add(f"{size or 'model'}{' (continued from a checkpoint)' if model.get('path') else ''}")
    return {"models": json.dumps(sorted(models))}
