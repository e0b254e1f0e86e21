"""`cpt submit`, `cpt runs ...` and `cpt demo`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from cli.state import state

runs_app = typer.Typer(help="Inspect and control runs in the store.", no_args_is_help=True)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class LiveReporter:
    """Progress bar over the run's global steps: stage / round / loss / LR."""

    def __init__(self, total: int, quiet: bool = False):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from cli.output import console

        self.c = console()
        self.quiet = quiet
        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn(), console=self.c,
                                 disable=quiet)
        self.task = self.bar.add_task("starting", total=total, info="")

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def round_started(self, plan, stage: str) -> None:
        w = " ".join(f"{d}={v:.2f}" for d, v in sorted(plan.weights.items()))
        self.bar.update(self.task, description=f"{stage} r{plan.round_index}", completed=plan.global_step_start)
        if not self.quiet:
            self.bar.console.print(f"{stage} round {plan.round_index} (attempt {plan.attempt}): "
                                        f"{plan.num_steps} steps, weights {w}")

    def progress(self, step: int, total: int, loss: float, lr: float) -> None:
        self.bar.update(self.task, completed=step, info=f"loss {loss:.3f} lr {lr:.2e}")

    def round_finished(self, plan, result) -> None:
        if not self.quiet:
            ev = " ".join(f"{d}={v:.3f}" for d, v in sorted(result.eval_losses.items()))
            self.bar.console.print(f"  eval {ev}  ({result.tokens_per_s:,.0f} tok/s, {result.wall_s:.1f}s)")

    def message(self, text: str) -> None:
        self.bar.console.print(text)


def _drive(run_id: str, quiet: bool = False, manifests: dict | None = None) -> str:
    from orchestrator.cluster import shutdown
    from orchestrator.controller import Controller
    from store.errors import LeaseLost

    home, store = state.home(), state.store()
    ctl = Controller(store, home, run_id)
    ctl.manifests = manifests
    try:
        with LiveReporter(ctl.spec.total_steps(), quiet) as rep:
            ctl.reporter = rep
            status = ctl.run()
    finally:
        shutdown()
        _forget_store_url(run_id)
    if status == "taken over":  # the run goes on under its new controller; this one did not finish it
        raise LeaseLost(f"run {run_id}: taken over by another controller (its lease expired while this one "
                        f"was paused or cut off); this controller stopped without writing")
    _print_summary(store, run_id, status)
    return status


def _forget_store_url(run_id: str) -> None:
    """A detached run's store URL file (it may hold a password) lives as long as the run's job."""
    path = os.environ.get("CPT_STORE_URL_FILE")
    if path and Path(path).name == f"store-url-{run_id}":
        Path(path).unlink(missing_ok=True)


def _print_summary(store, run_id: str, status: str) -> None:
    from cli.output import console, loss_table
    from orchestrator.reports import stage_summary

    rows = stage_summary(store, run_id)
    if rows:
        loss_table(f"validation loss per domain ({run_id})", rows)
    console().print(f"run {run_id}: {status}")


def submit(spec: Path = typer.Argument(..., help="Run spec YAML."),
           detach: bool = typer.Option(False, help="Submit the controller as a Ray Job and return."),
           quiet: bool = typer.Option(False, help="No live progress display."),
           as_json: bool = typer.Option(False, "--json", help="Print {run_id, status} as JSON.")) -> None:
    """Validate, record and run a spec (stages x rounds on Ray)."""
    from cli.output import console, print_json
    from orchestrator.data_check import check_data
    from orchestrator.spec import load_spec
    from orchestrator.submit import create_run

    home = state.home()
    run_spec, text = load_spec(spec)
    manifests = check_data(run_spec)
    _detach_target(home, detach)  # before anything is recorded
    store = state.store()
    run_id = create_run(store, home, run_spec, text)
    if detach:
        run_id_job = _detach(run_id)
        if as_json:
            print_json({"run_id": run_id, "job_id": run_id_job, "status": "pending"})
        else:
            console().print(f"submitted run {run_id} as Ray job {run_id_job}; follow with `cpt runs show {run_id}`")
        return
    console().print(f"run {run_id} recorded")
    try:
        status = _drive(run_id, quiet or as_json, manifests)
    except BaseException as exc:
        _not_left_pending(store, run_id, exc)
        raise
    if as_json:
        print_json({"run_id": run_id, "status": status})
    _exit_for(status)


def _not_left_pending(store, run_id: str, exc: BaseException) -> None:
    """A submit stopped before its controller took the run (Ctrl-C, a crash, a bad cluster) must
    not leave a `pending` row that looks like queued work: cancel or fail it, with the reason."""
    from store.errors import Cancelled

    try:
        if store.get_run(run_id).status != "pending":
            return
        if isinstance(exc, KeyboardInterrupt | Cancelled):
            store.set_run_status(run_id, "cancelled", message="Ctrl-C before the run started")
        else:
            store.set_run_status(run_id, "failed", error=f"submit stopped before the run started: "
                                                         f"{type(exc).__name__}: {exc}"[:4000])
    except Exception:  # the store itself may be what failed; the original error is what matters
        pass


def _exit_for(status: str) -> None:
    """A run that did not finish: cancelled exits 130 (like Ctrl-C), anything else 1."""
    if status != "finished":
        raise typer.Exit(130 if status == "cancelled" else 1)


def _detach_target(home, detach: bool) -> None:
    """What can be said about the cluster before a run is recorded: --detach needs one, and a
    GCS address must be well-formed and answer."""
    from orchestrator.cluster import check_address
    from store.errors import InputError

    if detach and not home.ray_address:
        raise InputError("--detach needs a Ray cluster: pass --address or set RAY_ADDRESS "
                         "(the job server URL, e.g. http://127.0.0.1:8265)")
    if home.ray_address and not detach:
        check_address(home.ray_address)


def _detach(run_id: str) -> str:
    import shlex
    import sys

    from orchestrator.cluster import submit_job
    from store.errors import ClusterError, InputError
    from store.secrets import redact

    home = state.home()
    if not home.ray_address:
        raise InputError("--detach needs a Ray cluster: pass --address or set RAY_ADDRESS "
                         "(the job server URL, e.g. http://127.0.0.1:8265)")
    # the job's shell has the cluster's PATH, not this venv's: call this interpreter explicitly
    entry = (f"{shlex.quote(sys.executable)} -m cli.main --home {shlex.quote(str(home.root))} "
             f"runs resume {shlex.quote(run_id)} --quiet")
    env = {"RAY_ADDRESS": os.environ.get("CPT_JOB_RAY_ADDRESS", "auto"), "RAY_AUTH_MODE": "token"}
    if home.store_url != home.default_store_url:
        # The store URL may hold a password: the job reads it from a file only this user can read,
        # never from its command line or environment, which `ray job list` and the dashboard show.
        env["CPT_STORE_URL_FILE"] = str(home.write_secret(f"store-url-{run_id}", home.store_url))
    from orchestrator.local_cluster import read_state

    local = read_state(home.root)
    target = local["dashboard"] if local and local["gcs"] == home.ray_address else home.ray_address
    try:
        return submit_job(target, entry, env, run_id=run_id)
    except Exception as exc:  # unreachable job server, no agent, version mismatch: the run never started
        if "CPT_STORE_URL_FILE" in env:
            Path(env["CPT_STORE_URL_FILE"]).unlink(missing_ok=True)
        state.store().set_run_status(run_id, "failed", error=f"job submission failed: {redact(str(exc))[:300]}")
        raise ClusterError(f"--address {redact(home.ray_address)}: cannot submit a Ray job ({type(exc).__name__}: "
                           f"{redact(str(exc).splitlines()[0])[:300]})") from None


@runs_app.command("list")
def list_runs(limit: int = typer.Option(50, min=1, help="Most recent N runs."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """List runs, newest first."""
    from cli.output import print_json, table

    store = state.store()
    rows = []
    for r in store.list_runs(limit):
        done = len(store.rounds(r.id, status="finished"))
        total = sum(st["rounds"] for st in r.spec_json["stages"])
        rows.append({"id": r.id, "name": r.name, "status": store.shown_status(r), "rounds": f"{done}/{total}",
                     "created": r.created_at.isoformat(timespec="seconds"), "error": r.error})
    if as_json:
        print_json(rows)
    else:
        table("runs", ["id", "name", "status", "rounds", "created"],
              [[r["id"], r["name"], r["status"], r["rounds"], r["created"]] for r in rows])


@runs_app.command("show")
def show(run_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json"),
         last: int = typer.Option(50, "--last", min=1, max=10_000_000,
                                  help="Round attempts in the table (the newest); --json lists them all."),
         every: bool = typer.Option(False, "--all", help="Every round attempt in the table.")) -> None:
    """A run's stages, rounds (weights, losses, throughput) and per-stage losses."""
    from cli.audit import cursor_rows
    from cli.output import console, loss_table, print_json, table
    from orchestrator.reports import eval_summary, stage_summary
    from orchestrator.tracking import link_line

    store = state.store()
    run = store.get_run(run_id)
    rounds = store.rounds(run_id)
    cursors, rollovers = cursor_rows(rounds)
    from cli.watch import progress_line, render

    live = progress_line(run, rounds)
    status = store.shown_status(run)
    if status != run.status and live is not None:
        live = {**live, "eta_s": None}
    if as_json:
        print_json({"id": run.id, "name": run.name, "status": status, "error": run.error,
                    "mlflow_run_id": run.mlflow_run_id, "ray_job_id": run.ray_job_id, "workdir": run.workdir,
                    "stages": [{"index": s.index, "name": s.name, "status": s.status, "steps": s.total_steps,
                                "rounds": s.num_rounds} for s in store.stages(run_id)],
                    "rounds": [{"stage": x.stage_index, "round": x.round_index, "attempt": x.attempt,
                                "status": x.status, "weights": x.weights, "steps": [x.step_start, x.step_end],
                                "eval_losses": x.eval_losses, "train_loss": x.train_loss,
                                "tokens_per_s": x.tokens_per_s, **_throughput(x), "checkpoint": x.checkpoint_uri,
                                "error": x.error} for x in rounds],
                    "data": {"cursors": cursors, "epoch_rollovers": rollovers}, "progress": live,
                    "mlflow_url": _mlflow_url(run),
                    "summary": stage_summary(store, run_id), "evals": eval_summary(store, run_id)})
        return
    c = console()
    c.print(render(run, live, status) + (f" - {run.error}" if run.error else ""))
    if _mlflow_url(run):
        c.print(link_line(_mlflow_url(run)))
    if run.ray_job_id:
        c.print(f"Ray job: {run.ray_job_id} (the dashboard's Jobs page; metadata cpt_run_id={run.id})")
    if not every and len(rounds) > last:  # a run of thousands of rounds: the newest, and how many more
        c.print(f"rounds: the last {last} of {len(rounds):,} attempts (--all or --last N for more; --json for all)")
        rounds = rounds[-last:]
    perf = [_throughput(x) for x in rounds]
    table("rounds", ["stage", "round", "try", "status", "steps", "weights", "train loss", "eval", "ranks", "tok/s",
                     "MFU", "overhead s"],
          [[x.stage_index, x.round_index, x.attempt, x.status, f"{x.step_start}-{x.step_end}",
            " ".join(f"{d}={w:.2f}" for d, w in sorted(x.weights.items())), x.train_loss,
            " ".join(f"{d}={v:.3f}" for d, v in sorted((x.eval_losses or {}).items())), p["workers"],
            None if x.tokens_per_s is None else f"{x.tokens_per_s:,.0f}",
            None if p["mfu"] is None else f"{p['mfu']:.1%}",
            None if p["overhead_s"] is None else f"{p['overhead_s']:.2f}"] for x, p in zip(rounds, perf, strict=True)])
    if cursors:
        table("data read (without replacement; next position per domain)", ["domain", "epoch", "position"],
              [[d, cur["epoch"], cur["pos"]] for d, cur in sorted(cursors.items())])
        for line in rollovers:
            c.print(line, markup=False)
    rows = stage_summary(store, run_id)
    if rows:
        loss_table("validation loss per domain", rows)
    scores = eval_summary(store, run_id)
    if scores:
        table("downstream scores (`cpt runs evals` for each round)", ["task metric", "first", "final", "change"],
              [[k, f"{v['first']:.4f}", f"{v['final']:.4f}", f"{v['change']:+.4f}"] for k, v in sorted(scores.items())])


def _mlflow_url(run) -> str | None:
    """The run's page in the MLflow UI, as the controller recorded it (None before tracking began)."""
    from orchestrator.tracking import read_link

    return read_link(run.workdir).get("url")


def _throughput(x) -> dict:
    """Per-round scale facts from the stored result: ranks, fit time, overhead (controller-side round
    wall minus fit), MFU, rank 0's peak GPU memory, and the checkpoint's stall (time the ranks did
    not train for it) and write time (beside the next round's training when asynchronous)."""
    res = x.result
    if res is None:
        return {"workers": None, "fit_s": None, "overhead_s": None, "mfu": None, "checkpoint_stall_s": None,
                "checkpoint_write_s": None, "peak_mem_gb": None}
    overhead = None if res.fit_s is None or res.round_s is None else res.round_s - res.fit_s
    return {"workers": res.workers, "fit_s": res.fit_s, "overhead_s": overhead, "mfu": res.mfu,
            "checkpoint_stall_s": res.checkpoint_stall_s, "checkpoint_write_s": res.checkpoint_write_s,
            "peak_mem_gb": res.peak_mem_gb}


@runs_app.command("resume")
def resume(run_id: str = typer.Argument(...), quiet: bool = typer.Option(False, help="No live display."),
           workers: int = typer.Option(None, "--workers", min=1, max=4096,
                                       help="Resume on this many ranks (the checkpoint, data order and global "
                                            "batch do not depend on it).")) -> None:
    """Continue a run after its last finished round (after a crash, kill or cancel)."""
    from store.errors import InputError

    run = state.store().get_run(run_id)
    if run.status == "finished":
        raise InputError(f"run {run_id} is already finished")
    if workers is not None:
        from orchestrator.submit import resize_run

        resize_run(state.store(), run_id, workers)
    _exit_for(_drive(run_id, quiet))


@runs_app.command("cancel")
def cancel(run_id: str = typer.Argument(...)) -> None:
    """Stop a run cleanly: the controller stops its round and marks the run cancelled."""
    from cli.output import console

    outcome = state.store().request_cancel(run_id)
    console().print({"requested": f"cancel requested for {run_id}; its controller stops within a second",
                     "cancelled": f"run {run_id} cancelled"}.get(outcome, f"run {run_id} is {outcome}"))


@runs_app.command("events")
def events(run_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """The run's state transitions, oldest first."""
    from cli.output import print_json, table

    state.store().get_run(run_id)  # an unknown run is exit 2 naming it, not an empty table
    ev = [{"at": e.at.isoformat(timespec="seconds"), "entity": e.entity, "id": e.entity_id,
           "from": e.from_state, "to": e.to_state, "message": e.message} for e in state.store().events(run_id)]
    if as_json:
        print_json(ev)
    else:
        table(f"events of {run_id}", ["at", "entity", "id", "from", "to", "message"],
              [list(e.values()) for e in ev])


def demo(install: bool = typer.Option(True, help="apt-get install missing text packages (root); "
                                                  "--no-install on a machine without them runs the any-OS demo."),
         spec: Path = typer.Option(EXAMPLES / "demo.yaml", help="Demo spec."),
         quiet: bool = typer.Option(False, help="No live progress display.")) -> None:
    """Prepare the built-in data and run a real 2-stage CPT (English -> German, 5% replay) on CPU."""
    from cli.output import console
    from corpus.builtin import BUILTINS, missing_packages, prepare_builtins
    from orchestrator.data_check import check_data
    from orchestrator.spec import load_spec
    from orchestrator.submit import create_run

    home = state.home()
    c = console()
    run_spec, text = load_spec(spec)
    missing = missing_packages([d for d in run_spec.domains if d in BUILTINS])
    if not install and missing and spec == EXAMPLES / "demo.yaml":
        c.print(f"Debian text packages {missing} are not installed: running the any-OS demo instead "
                f"(Python's help topics -> Python source, both ship with Python; examples/demo-anyos.yaml)")
        run_spec, text = load_spec(EXAMPLES / "demo-anyos.yaml")
    prepare_builtins(home.data, home.tokenizer, [d for d in run_spec.domains if d in BUILTINS], install=install,
                     log=c.print)
    check_data(run_spec)
    c.print(f"demo: {len(run_spec.stages)} stages, {run_spec.total_steps()} steps "
            f"({json.dumps({s.name: s.domains for s in run_spec.stages})})")
    run_id = create_run(state.store(), home, run_spec, text)
    status = _drive(run_id, quiet)
    c.print(f"inspect: cpt runs show {run_id} | cpt ui (MLflow at http://127.0.0.1:5000)")
    _exit_for(status)
