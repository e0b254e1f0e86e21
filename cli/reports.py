"""`cpt compare` and `cpt report`: read-only views of finished work in the store."""

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


def report(run_id: str = typer.Argument(...),
           out: Path = typer.Option(None, "--out", "-o", help="HTML path (default RUN_WORKDIR/report.html).")
           ) -> None:
    """Write a self-contained HTML report: loss curves, LR as trained, mixture weights, rounds."""
    from cli.output import console
    from orchestrator.reports import write_report

    store = state.store()
    path = write_report(store, run_id, out or Path(store.get_run(run_id).workdir) / "report.html")
    console().print(f"wrote {path}")
