"""`cpt`: the typer app. Heavy modules (torch, ray, lightning, mlflow) are imported inside
commands so `cpt --help` stays instant. CptError subclasses map to exit codes here, once."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cli import agent as agent_cmds
from cli import audit as audit_cmds
from cli import cluster as cluster_cmds
from cli import data as data_cmds
from cli import export as export_cmds
from cli import reports as report_cmds
from cli import runs as runs_cmds
from cli import watch as watch_cmds
from cli.state import state

app = typer.Typer(help="Continual pre-training orchestration: stages, rounds, replay and data mixing.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(data_cmds.data_app, name="data")
app.add_typer(data_cmds.tokenizer_app, name="tokenizer")
app.add_typer(runs_cmds.runs_app, name="runs")
app.add_typer(cluster_cmds.cluster_app, name="cluster")
runs_cmds.runs_app.command("samples")(audit_cmds.samples)
runs_cmds.runs_app.command("watch")(watch_cmds.watch)
runs_cmds.runs_app.command("evals")(report_cmds.evals)
data_cmds.data_app.command("show")(audit_cmds.show_sequence)
app.add_typer(agent_cmds.agent_app, name="agent")
db_app = typer.Typer(help="Run store database.", no_args_is_help=True)
schedule_app = typer.Typer(help="LR schedules.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(schedule_app, name="schedule")
app.command("submit")(runs_cmds.submit)
app.command("demo")(runs_cmds.demo)
app.command("compare")(report_cmds.compare)
app.command("report")(report_cmds.report)
app.command("export")(export_cmds.export)


@app.callback()
def _root(
    home: Path = typer.Option(None, "--home", envvar="CPT_HOME", help="State folder (default ./cpt-home)."),
    store: str = typer.Option(None, "--store", envvar="CPT_STORE_URL",
                              help="Run store SQLAlchemy URL (default SQLite in --home)."),
    address: str = typer.Option(None, "--address", envvar="RAY_ADDRESS",
                                help="Ray cluster address (default: start a local Ray)."),
) -> None:
    state.configure(home, store, address)


@app.command()
def validate(spec: Path = typer.Argument(..., help="Run spec YAML."),
             check_files: bool = typer.Option(True, "--check-data/--no-check-data",
                                              help="Also check tokenizer, shards and checkpoint on disk."),
             as_json: bool = typer.Option(False, "--json", help="Print the resolved spec as JSON.")) -> None:
    """Validate a run spec and print it resolved (defaults filled in, paths absolute)."""
    from cli.output import console, print_json
    from orchestrator.data_check import check_data
    from orchestrator.spec import load_spec

    state.home()
    run_spec, _ = load_spec(spec)
    if check_files:
        check_data(run_spec)
    resolved = run_spec.model_dump(mode="json")
    if as_json:
        print_json(resolved)
        return
    import yaml

    c = console()
    c.print(yaml.safe_dump(resolved, sort_keys=False), end="")
    steps = [run_spec.stage_steps(i) for i in range(len(run_spec.stages))]
    c.print(f"[green]ok[/green]: {len(steps)} stage(s), steps per stage {steps}, "
            f"{run_spec.tokens_per_step():,} tokens/step", markup=True)


@app.command()
def mixers(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the registered mixers and their parameters."""
    from cli.output import print_json, table
    from mixers.base import MIXERS, mixer_names

    rows = [[n, (MIXERS[n].__doc__ or "").strip().splitlines()[0],
             ", ".join(f"{k}: {f.description or ''}" for k, f in MIXERS[n].Config.model_fields.items() if k != "kind")]
            for n in mixer_names()]
    if as_json:
        print_json([{"name": r[0], "doc": r[1], "params": r[2]} for r in rows])
    else:
        table("mixers", ["name", "what", "params"], rows)


@app.command()
def models(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the model families a run can build from scratch (`model: {family: NAME, ...}`)."""
    from cli.output import print_json, table
    from workers.families import FAMILIES

    rows = [[f.name, f.doc, "yes" if f.gqa else "no"] for f in sorted(FAMILIES.values(), key=lambda f: f.name)]
    if as_json:
        print_json([{"name": r[0], "doc": r[1], "gqa": r[2] == "yes"} for r in rows])
    else:
        table("model families", ["family", "what", "grouped-query attention"], rows)


@schedule_app.command("plot")
def schedule_plot(spec: Path = typer.Argument(..., help="Run spec YAML."),
                  out: Path = typer.Option(None, "--out", "-o", help="PNG path (default <spec>.lr.png).")) -> None:
    """Plot the whole run's LR over global steps (each stage re-warmed and re-decayed)."""
    from cli.output import console
    from orchestrator.plots import plot_lr
    from orchestrator.spec import load_spec

    state.home()
    run_spec, _ = load_spec(spec)
    path = plot_lr(run_spec, out or spec.with_suffix(".lr.png"))
    console().print(f"wrote {path}")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply run-store migrations (Alembic) up to REVISION."""
    from cli.output import console
    from store.db import upgrade
    from store.secrets import redact

    url = state.home().store_url
    upgrade(url, revision)
    console().print(f"run store {redact(url)} at {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the run store's migration revision."""
    from store.db import current_revision, make_engine

    print(current_revision(make_engine(state.home().store_url)) or "(empty)")


@app.command()
def ui(port: int = typer.Option(5000, min=1, max=65535, help="MLflow UI port."),
       host: str = typer.Option("127.0.0.1", help="Bind address (keep 127.0.0.1 unless you mean it).")) -> None:
    """Start the MLflow UI on the run's tracking store; print the Ray dashboard URL."""
    import os

    from cli.output import console

    home = state.home()
    _check_bind(host, port)
    c = console()
    c.print(f"MLflow UI: http://{host}:{port}  (store {home.mlflow_uri})")
    latest = _latest_experiment_url(f"http://{host}:{port}")
    if latest:
        c.print(f"latest run's experiment: {latest}")
    from orchestrator.local_cluster import read_state

    local = read_state(home.root)
    c.print("Ray dashboard: " + (local["dashboard"] if local else f"{home.ray_address} (cluster)" if home.ray_address
                                 else "start one with `cpt cluster up` (runs then join it)"))
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", home.mlflow_uri,
           "--default-artifact-root", (home.root / "mlartifacts").as_uri(), "--host", host, "--port", str(port),
           "--workers", "1"]
    raise typer.Exit(_serve(cmd, env))


def _latest_experiment_url(base: str) -> str | None:
    """The runs table of the newest run's experiment on this UI (when it tracks to the local store)."""
    from orchestrator.tracking import read_link

    try:
        runs = state.store().list_runs(1)
    except Exception:  # noqa: BLE001 - the UI starts whatever state the run store is in
        return None
    link = read_link(runs[0].workdir) if runs else {}
    if not link.get("local") or "experiment_url" not in link:
        return None
    return base + link["experiment_url"][link["experiment_url"].index("/#/"):]


def _check_bind(host: str, port: int) -> None:
    """InputError (exit 2) if nothing can listen on host:port (taken, or not this machine's
    address), before the server starts and fails in its own words."""
    import socket

    from store.errors import InputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as exc:
        raise InputError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


def _serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run a server in its own process group and stop the whole group (its workers too) when cpt
    is stopped: Ctrl-C, SIGTERM or SIGHUP never leave an orphaned server holding the port."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        rc = proc.wait()
        return rc or 1  # a server stops only when told to: ending by itself, even with 0, is a failure
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage/parameter errors, Exit, Abort) classes as this typer raises them: typer vendors click
    in newer releases and uses click itself in older ones, so both families are caught."""
    import importlib

    errors, exits, aborts = [], [typer.Exit], [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        errors.append(mod.ClickException)
        exits += [getattr(mod, "Exit", typer.Exit)]
        aborts += [getattr(mod, "Abort", typer.Abort)]
    return tuple(errors), tuple(exits), tuple(aborts)


def _internal_error(exc: BaseException) -> None:
    """A bug or an unexpected library error: the traceback is printed (it is what a bug report
    needs) but with every URL credential and secret query parameter masked; exit 1."""
    import traceback

    from store.secrets import redact

    sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    sys.exit(1)


def main() -> None:
    from store.errors import CptError

    errors, exits, aborts = _click_errors()
    try:
        rc = app(standalone_mode=False, prog_name="cpt")
    except CptError as exc:
        from rich.markup import escape

        from cli.output import console
        from store.secrets import redact

        console(stderr=True).print(f"[red]error[/red]: {escape(redact(str(exc)))}", markup=True)
        sys.exit(exc.exit_code)
    except exits as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except errors as exc:  # a typo, an unknown option, a wrong-typed value: usage + one line, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except (*aborts, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:
        if not type(exc).__module__.startswith("sqlalchemy"):
            _internal_error(exc)
        # a driver error that reached the top (a store that went away or broke mid-command): one
        # redacted line, exit 2, no traceback full of SQL
        from rich.markup import escape

        from cli.output import console
        from store.secrets import redact

        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        console(stderr=True).print(f"[red]error[/red]: run store: {escape(redact(first))} ({type(exc).__name__})",
                                   markup=True)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
