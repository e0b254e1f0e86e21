"""`cpt agent ...`: explore random mixtures, train the Data Mixing Agent, inspect it."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.state import state

agent_app = typer.Typer(help="The Data Mixing Agent: explore, train, show.", no_args_is_help=True)


@agent_app.command("explore")
def explore(spec: Path = typer.Argument(..., help="Proxy run spec; its last stage is explored."),
            trajectories: int = typer.Option(8, "-n", "--trajectories", help="Random trajectories to run."),
            concentration: float = typer.Option(1.0, help="Dirichlet concentration of the random mixtures."),
            parallel: int = typer.Option(2, help="Trajectories running at once."),
            tracking: bool = typer.Option(False, help="Also log each trajectory to MLflow.")) -> None:
    """Run short proxy CPT trajectories with random mixtures; every transition goes to the store."""
    from cli.output import console
    from orchestrator import cluster
    from orchestrator.controller import SilentReporter
    from orchestrator.explore import explore as run_explore
    from orchestrator.spec import check_data, load_spec

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
          domains: int = typer.Option(2, help="Number of domains the agent mixes (selects transitions)."),
          beta: float = typer.Option(0.5, help="AWR temperature: small trusts advantages more."),
          gamma: float = typer.Option(0.9, help="Discount of the per-round rewards."),
          epochs: int = typer.Option(400, help="Full-batch epochs for value and policy."),
          exclude_run: list[str] = typer.Option(None, help="Runs whose transitions are left out."),
          seed: int = typer.Option(0)) -> None:
    """Train the policy offline (advantage-weighted regression) on all stored transitions."""
    from cli.output import console
    from mixers.agent import save_agent, train_agent

    rows = state.store().transitions(num_domains=domains, exclude_runs=exclude_run or None)
    policy, meta = train_agent(rows, domains, beta=beta, gamma=gamma, epochs=epochs, seed=seed)
    save_agent(policy, out, meta)
    console().print(f"wrote {out}: {meta['transitions']} transitions from {meta['trajectories']} trajectories, "
                    f"mean return {meta['mean_return']}")


@agent_app.command("show")
def show(path: Path = typer.Argument(..., help="Agent file.")) -> None:
    """Print an agent's metadata."""
    from cli.output import print_json
    from mixers.agent import load_agent

    print_json(load_agent(path)[1])
