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
    from cli.audit import pick_round
    from cli.output import console
    from workers.export import export_hf

    store = state.store()
    run = store.get_run(run_id)
    pick = pick_round(store, run_id, round_)
    path = export_hf(pick.checkpoint_uri, out, run.spec_json["tokenizer"], run.spec_json["model"].get("path"),
                     overwrite, {"run_id": run_id, "stage": pick.stage_index, "round": pick.round_index})
    console().print(f"exported run {run_id} stage {pick.stage_index} round {pick.round_index} to {path}")
