"""`cpt runs watch RUN`: a live terminal view of a run, read from the store (any machine that can
reach the store can watch: the controller writes each running round's latest progress there)."""

from __future__ import annotations

import time
from typing import Any

import typer

from cli.state import state

LIVE = ("running", "pending")


def progress_line(run, rounds) -> dict[str, Any] | None:
    """Where a running run stands: stage, round, step/total, loss, LR, tokens/s, weights, ETA."""
    spec = run.spec_json
    live = [x for x in rounds if x.status == "running" and x.progress]
    if not live:
        return None
    x = live[-1]
    p = x.progress
    total = _total_steps(spec)
    per_step = spec["batch_size"] * spec["seq_len"]
    eta = (total - p["global_step"]) * per_step / p["tokens_per_s"] if p.get("tokens_per_s") else None
    return {"stage": spec["stages"][x.stage_index]["name"], "stage_index": x.stage_index, "round": x.round_index,
            "attempt": x.attempt, "global_step": p["global_step"], "total_steps": total,
            "round_step": p["step"] - p["round_first"], "round_steps": p["round_steps"], "loss": p["loss"],
            "lr": p["lr"], "tokens_per_s": p["tokens_per_s"], "grad_norm": p.get("grad_norm"),
            "weights": x.weights, "eta_s": eta, "updated": p["t"]}


def _total_steps(spec: dict[str, Any]) -> int:
    import math

    per_step = spec["batch_size"] * spec["seq_len"]
    return sum(max(1, math.ceil(st["tokens"] / per_step)) for st in spec["stages"])


def render(run, line: dict[str, Any] | None, status: str | None = None) -> str:
    """The live view; `status` is the store's `shown_status` (a dead controller's run is not running)."""
    status = status or run.status
    head = f"{run.id} ({run.name}): {status}"
    if status not in LIVE:
        line = None if line is None else {**line, "eta_s": None}
    if line is None:
        return head + ("" if status not in LIVE else "  (waiting for the first progress report)")
    s = line["eta_s"]
    eta = "?" if s is None else f"{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"
    weights = " ".join(f"{d}={w:.2f}" for d, w in sorted(line["weights"].items()))
    where = (f"stage {line['stage']} ({line['stage_index']}) round {line['round']} try {line['attempt']}: "
             f"step {line['round_step']}/{line['round_steps']} of the round, "
             f"{line['global_step']}/{line['total_steps']} of the run")
    numbers = (f"loss {line['loss']:.4f}  lr {line['lr']:.2e}  grad norm {line['grad_norm'] or 0:.3f}  "
               f"{line['tokens_per_s']:,.0f} tokens/s  ETA {eta}")
    return f"{head}\n  {where}\n  {numbers}\n  weights {weights}"


def watch(run_id: str = typer.Argument(..., help="Run id."),
          interval: float = typer.Option(2.0, min=0.2, help="Seconds between refreshes."),
          as_json: bool = typer.Option(False, "--json", help="Print one JSON line per refresh (for scripts).")
          ) -> None:
    """Follow a run live until it stops: stage, round, step/total, loss, LR, tokens/s, weights, ETA."""
    import json

    from cli.output import console
    from store.errors import InputError
    from store.runs import GONE

    store = state.store()
    c = console()
    last = None
    while True:
        run = store.get_run(run_id)
        status = store.shown_status(run)
        line = progress_line(run, store.rounds(run_id))
        if as_json:
            snapshot = json.dumps({"status": status, "progress": line}, sort_keys=True)
            if snapshot != last:
                c.print(snapshot)
                last = snapshot
        else:
            text = render(run, line, status)
            if text != last:
                c.print(text)
                last = text
        if status == GONE:
            raise InputError(f"run {run_id}: its controller is gone (it stopped without recording why: killed, "
                             f"hung up, out of disk or its node lost); `cpt runs resume {run_id}` continues it")
        if status not in LIVE:
            return
        time.sleep(interval)
