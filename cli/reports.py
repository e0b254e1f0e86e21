"""`cpt compare`, `cpt report` and `cpt runs evals`: read-only views of finished work in the store."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.state import state


def compare(run_ids: list[str] = typer.Argument(..., help="Runs to compare."),
            domains: str = typer.Option(None, help="Comma-separated domains to average (default: all)."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Final per-domain validation loss, average, forgetting and compute, side by side."""
    from cli.output import print_json, table
    from orchestrator.reports import compare as compare_runs

    rows = compare_runs(state.store(), run_ids, domains.split(",") if domains else None)
    if as_json:
        print_json(rows)
        return
    from cli.output import console

    for r in rows:
        if not r["rounds"]:
            console(stderr=True).print(f"run {r['run_id']} ({r['status']}) has no finished round yet")
    doms = list(rows[0]["final"]) if rows else []
    table("comparison", ["run", "name", *doms, "average", "forgetting", "tokens", "wall s"],
          [[r["run_id"], r["name"], *[r["final"][d] for d in doms], r["average"],
            " ".join(f"{d}={v:+.3f}" for d, v in r["forgetting"].items()) if r["forgetting"] else "-",
            f"{r['tokens']:,}", f"{r['wall_s']:.0f}"] for r in rows])
    tasks = sorted({k for r in rows for k in r.get("evals", {})})
    if tasks:  # downstream scores: final value and change since the first evaluated round
        table("downstream scores (final, change)", ["run", *tasks],
              [[r["run_id"], *[f"{r['evals'][t]['final']:.4f} ({r['evals'][t]['change']:+.4f})"
                               if t in r.get("evals", {}) else "-" for t in tasks]] for r in rows])


def report(run_id: str = typer.Argument(...),
           out: Path = typer.Option(None, "--out", "-o", help="HTML path (default RUN_WORKDIR/report.html).")
           ) -> None:
    """Write a self-contained HTML report: loss curves, LR as trained, mixture weights, rounds."""
    from cli.output import console
    from orchestrator.reports import write_report

    store = state.store()
    path = write_report(store, run_id, out or Path(store.get_run(run_id).workdir) / "report.html")
    console().print(f"wrote {path}")


def evals(run_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Downstream scores of the run's rounds (lm-evaluation-harness), and evaluations that failed."""
    from cli.output import print_json, table
    from store.evals import results

    store = state.store()
    store.get_run(run_id)  # an unknown run is exit 2 naming it
    rows = [{"stage": e.stage_index, "round": e.round_index, "task": e.task, "role": e.role, "metric": e.metric or None,
             "value": e.value, "stderr": e.stderr, "samples": e.samples, "seconds": round(e.seconds, 2),
             "error": e.error} for e in results(store, run_id)]
    if as_json:
        print_json(rows)
        return
    table(f"evaluations of {run_id}", ["round", "task", "role", "metric", "value", "stderr", "samples", "s"],
          [[f"{r['stage']}.{r['round']}", r["task"], r["role"], r["metric"] or "failed",
            f"{r['value']:.4f}" if r["value"] is not None else (r["error"] or "")[:80],
            f"{r['stderr']:.4f}" if r["stderr"] is not None else "-", r["samples"] or "-", r["seconds"]]
           for r in rows])
