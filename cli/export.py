"""`cpt export RUN [--round S.R] -o DIR`: a round checkpoint as a Hugging Face model folder."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.state import state


def export(run_id: str = typer.Argument(..., help="Run id."),
           round_: str = typer.Option(None, "--round", help="STAGE.ROUND (0-based); default the last finished round."),
           out: Path = typer.Option(..., "--out", "-o", help="Output folder (created; must be empty)."),
           overwrite: bool = typer.Option(False, help="Replace a non-empty output folder.")) -> None:
    """Write a round's model as a folder AutoModelForCausalLM / AutoTokenizer.from_pretrained load."""
    from cli.output import console
    from store.errors import InputError
    from workers.export import export_hf

    store = state.store()
    run = store.get_run(run_id)
    done = store.rounds(run_id, status="finished")
    if round_ is not None:
        try:
            stage, rnd = (int(x) for x in round_.split("."))
        except ValueError:
            raise InputError(f"--round {round_!r}: expected STAGE.ROUND, e.g. 1.0") from None
        done = [r for r in done if (r.stage_index, r.round_index) == (stage, rnd)]
    if not done:
        raise InputError(f"run {run_id} has no finished round" + (f" {round_}" if round_ else ""))
    pick = done[-1]
    path = export_hf(pick.checkpoint_uri, out, run.spec_json["tokenizer"], run.spec_json["model"].get("path"),
                     overwrite, {"run_id": run_id, "stage": pick.stage_index, "round": pick.round_index})
    console().print(f"exported run {run_id} stage {pick.stage_index} round {pick.round_index} to {path}")
