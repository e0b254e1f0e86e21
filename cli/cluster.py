"""`cpt cluster up|down|status`: a persistent local Ray (with its dashboard) for this CPT_HOME."""

from __future__ import annotations

import typer

from cli.state import state

cluster_app = typer.Typer(help="A persistent local Ray for this CPT_HOME (runs join it; dashboard on).",
                          no_args_is_help=True)


@cluster_app.command("up")
def up(num_cpus: int = typer.Option(None, min=1, help="CPUs the cluster offers (default: all)."),
       as_json: bool = typer.Option(False, "--json")) -> None:
    """Start the cluster (or show the running one): token auth, 127.0.0.1 only, dashboard on."""
    from cli.output import console, print_json
    from orchestrator.local_cluster import up as start

    s = start(state.home(), num_cpus)
    if as_json:
        print_json(s)
    else:
        console().print(f"Ray at {s['gcs']}, dashboard {s['dashboard']} (token in CPT_HOME/secrets/ray-token); "
                        f"cpt commands of this CPT_HOME now join it. `cpt cluster down` stops it.")


@cluster_app.command("down")
def down() -> None:
    """Stop this CPT_HOME's cluster (only its own processes)."""
    from cli.output import console
    from orchestrator.local_cluster import down as stop

    console().print("stopped" if stop(state.home()) else "no cluster was running for this CPT_HOME")


@cluster_app.command("status")
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Whether this CPT_HOME's cluster runs, and where."""
    from cli.output import console, print_json
    from orchestrator.local_cluster import read_state

    s = read_state(state.home().root)
    if as_json:
        print_json(s)
    else:
        console().print("no cluster running" if s is None else f"up: Ray at {s['gcs']}, dashboard {s['dashboard']}")
