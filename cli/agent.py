"""`cpt agent ...`: explore random mixtures, train the Data Mixing Agent, inspect it."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.state import state

agent_app = typer.Typer(help="The Data Mixing Agent: explore, train, show.", no_args_is_help=True)


@agent_app.command("explore")
def explore(spec: Path = typer.Argument(..., help="Proxy run spec; its last stage is explored."),
            trajectories: int = typer.Option(8, "-n", "--trajectories", min=1, max=100_000,
                                              help="Random trajectories to run."),
            concentration: float = typer.Option(1.0, help="Dirichlet concentration of the random mixtures."),
            parallel: int = typer.Option(2, min=1, help="Trajectories running at once."),
            tracking: bool = typer.Option(False, help="Also log each trajectory to MLflow.")) -> None:
    """Run short proxy CPT trajectories with random mixtures; every transition goes to the store."""
    from cli.output import console
    from orchestrator import cluster
    from orchestrator.controller import SilentReporter
    from orchestrator.data_check import check_data
    from orchestrator.explore import explore as run_explore
    from orchestrator.spec import load_spec

    class Lines(SilentReporter):
        def message(self, text: str) -> None:
            console().print(text)

    home = state.home()
    run_spec, _ = load_spec(spec)
    check_data(run_spec)
    try:
        results = run_explore(state.store(), home, run_spec, trajectories, concentration, parallel, tracking,
                              Lines())
    finally:
        cluster.shutdown()
    ok = sum(s == "finished" for s in results.values())
    console().print(f"{ok}/{len(results)} trajectories finished; "
                    f"{len(state.store().transitions())} transitions in the store")
    if ok == 0:
        raise typer.Exit(1)


@agent_app.command("train")
def train(out: Path = typer.Option(Path("agent.safetensors"), "--out", "-o", help="Agent file to write."),
          method: str = typer.Option("awr", help="Offline RL method: awr (advantage-weighted regression) or "
                                                  "cql (conservative Q-learning)."),
          domains: int = typer.Option(None, help="Only transitions with this many domains (default: all; "
                                                  "one agent mixes any number)."),
          beta: float = typer.Option(0.5, help="AWR temperature: small trusts advantages more."),
          cql_alpha: float = typer.Option(1.0, help="CQL's conservative penalty weight."),
          gamma: float = typer.Option(0.9, help="Discount of the per-round rewards."),
          epochs: int = typer.Option(400, help="Full-batch epochs (value and policy; critic and actor)."),
          val_fraction: float = typer.Option(0.25, help="Share of trajectories held out to select the epoch."),
          exclude_run: list[str] = typer.Option(None, help="Runs whose transitions are left out."),
          reward: str = typer.Option("losses", help="losses: balanced change of held-out losses (every "
                                                    "transition has it); scores: balanced change of the "
                                                    "downstream scores of evals with role source/target."),
          metric: list[str] = typer.Option(None, help="With --reward scores: a task's score is the first of "
                                                      "these metrics it reports (default: acc, exact_match)."),
          seed: int = typer.Option(0)) -> None:
    """Train the policy offline on the stored transitions; the best epoch on held-out trajectories is kept."""
    from cli.output import console
    from mixers.agent import FEATURE_VERSION, save_agent
    from mixers.agent_train import train_agent
    from orchestrator.explore import describe_runs
    from store.errors import InputError
    from store.files import check_output

    if reward not in ("losses", "scores"):
        raise InputError(f"--reward: unknown {reward!r}; valid: losses, scores")
    check_output(out, "the agent file path")  # before the training, not after it
    store = state.store()
    stored = store.transitions(num_domains=domains, exclude_runs=exclude_run or None)
    rows = [t for t in stored if t.feature_version == FEATURE_VERSION]
    old = len(stored) - len(rows)
    if old:
        console().print(f"skipping {old} transitions of older feature versions (not {FEATURE_VERSION})")
    if reward == "scores":
        from mixers.agent_rewards import DEFAULT_METRICS, from_store

        rows, dropped = from_store(store, rows, metric or DEFAULT_METRICS)
        console().print(f"reward from downstream scores: {len(rows)} transitions; {dropped} left out (no source "
                        f"or target score at their round and the round before)")
    nets, meta = train_agent(rows, method=method, beta=beta, gamma=gamma, epochs=epochs, seed=seed,
                             val_fraction=val_fraction, cql_alpha=cql_alpha,
                             describe={**describe_runs(store, sorted({t.run_id for t in rows})), "reward": reward})
    save_agent(nets, out, meta)
    console().print(f"wrote {out}: {method}, {meta['transitions']} transitions from {meta['trajectories']} "
                    f"trajectories (+{meta['val_trajectories']} held out), held-out score {meta['val_score']} "
                    f"at epoch {meta['best_epoch']}")


@agent_app.command("show")
def show(path: Path = typer.Argument(..., help="Agent file."),
         as_json: bool = typer.Option(False, "--json", help="Print the raw metadata as JSON.")) -> None:
    """What an agent is and what it was trained on: method, pairs, trajectories, models, features, score."""
    import json

    from rich.markup import escape

    from cli.output import console, print_json
    from mixers.agent import load_agent

    meta = load_agent(path)[1]
    if as_json:
        print_json(meta)
        return
    pairs = json.loads(meta.get("pairs", "{}"))
    lines = [
        ("method", meta["method"] + (f" (beta {meta['beta']})" if "beta" in meta
                                     else f" (alpha {meta.get('cql_alpha')})")),
        ("trained on pairs", ", ".join(f"{p} x{n}" for p, n in sorted(pairs.items())) or "?"),
        ("domains per stage", ", ".join(map(str, json.loads(meta.get("domain_counts", "[]"))))),
        ("trajectories", f"{meta['trajectories']} training + {meta['val_trajectories']} held out "
                         f"({meta['transitions']} + {meta['val_transitions']} transitions)"),
        ("proxy models", "; ".join(json.loads(meta.get("models", "[]"))) or "?"),
        ("features", f"version {meta['feature_version']}: per domain {meta['per_domain_features']}; "
                     f"global {meta['global_features']}"),
        ("held-out score", f"{meta['val_score']} (epoch {meta['best_epoch']} of {meta['epochs']}; "
                           f"corr. of policy log-density with held-out return)"),
        ("reward", meta.get("reward", "losses")),
        ("network", f"hidden {meta['hidden']}, gamma {meta['gamma']}, seed {meta['seed']}"),
    ]
    for key, value in lines:
        console().print(f"[bold]{key:>18}[/bold]  {escape(value)}")
