"""Which data did a round see: `cpt runs samples` and `cpt data show`, plus the cursor view of `runs show`.

Nothing is logged per sequence during training: a round's sequence ids are a pure function of its
stored plan (cursors, weights, batch size, steps, seed), so they are recomputed here on demand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cli.state import state


def pick_round(store, run_id: str, round_: str | None):
    """The finished round STAGE.ROUND of a run (default the last finished one)."""
    from store.errors import InputError

    done = store.rounds(run_id, status="finished")
    if round_ is not None:
        try:
            stage, rnd = (int(x) for x in round_.split("."))
        except ValueError:
            raise InputError(f"--round {round_!r}: expected STAGE.ROUND, e.g. 1.0") from None
        done = [r for r in done if (r.stage_index, r.round_index) == (stage, rnd)]
    if not done:
        raise InputError(f"run {run_id} has no finished round" + (f" {round_}" if round_ else ""))
    return done[-1]


def round_samples(plan) -> dict[str, dict[str, Any]]:
    """Per domain: the sequence ids the round trained on (reading order) and its cursors."""
    from corpus.sampler import RoundSampler, SequenceSource

    sources = {d: SequenceSource.open(d, plan.domain_paths[d], plan.seq_len) for d, w in plan.weights.items()
               if w > 0}
    for d, src in sources.items():
        same_data(d, src, (plan.cursors.get(d) or {}).get("data"), plan.run_id)
    sampler = RoundSampler(sources, plan.weights, plan.cursors, plan.batch_size, plan.num_steps, plan.seed,
                           plan.stage_index, plan.round_index)
    end = sampler.end_cursors()
    return {d: {"count": len(ids), "sequences_per_epoch": sources[d].n, "start": plan.cursors[d], "end": end[d],
                "ids": ids.tolist()} for d, ids in sampler.round_ids().items()}


def same_data(domain: str, src, recorded: str | None, run_id: str) -> None:
    """DataError unless the domain still holds the data the run read (its recorded fingerprint:
    shard checksums and sequence layout); otherwise the ids would name other sequences."""
    from store.errors import DataError

    if recorded is not None and recorded != src.data_id:
        raise DataError(f"{src.data.folder}: domain {domain!r} holds other data than run {run_id} trained on "
                        f"(fingerprint {src.data_id}, the run recorded {recorded}: re-prepared or refilled "
                        f"since); its sequence ids would name other text")


def samples(run_id: str = typer.Argument(..., help="Run id."),
            round_: str = typer.Option(..., "--round", help="STAGE.ROUND (0-based), a finished round."),
            domain: str = typer.Option(None, "--domain", "-d", help="Only this domain."),
            as_json: bool = typer.Option(False, "--json", help="Print {domain: {ids, start, end, ...}} as JSON.")
            ) -> None:
    """The sequence ids each domain contributed to a round (for audits and data attribution)."""
    from cli.output import print_json, table
    from store.errors import InputError

    store = state.store()
    row = pick_round(store, run_id, round_)
    out = round_samples(row.plan)
    if domain is not None:
        if domain not in out:
            raise InputError(f"--domain {domain!r}: round {round_} trained on {sorted(out)}")
        out = {domain: out[domain]}
    if as_json:
        print_json(out)
        return
    table(f"sequences of run {run_id} round {round_}", ["domain", "count", "from (epoch:pos)", "to", "first ids"],
          [[d, v["count"], f"{v['start']['epoch']}:{v['start']['pos']}", f"{v['end']['epoch']}:{v['end']['pos']}",
            " ".join(map(str, v["ids"][:8])) + (" ..." if v["count"] > 8 else "")] for d, v in out.items()])


def show_sequence(domain: str = typer.Argument(..., help="Domain name (CPT_HOME/data/NAME, or the run's "
                                                          "domains with --run) or a domain folder."),
                  seq: int = typer.Option(..., "--seq", help="Sequence id (as `cpt runs samples` prints)."),
                  run_id: str = typer.Option(None, "--run", help="Resolve the domain and seq_len from this run."),
                  seq_len: int = typer.Option(None, "--seq-len", help="Sequence length (default: the run's, "
                                                                       "else 128)."),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Print one training sequence of a domain as text (and its token ids with --json)."""
    from cli.output import console, print_json
    from corpus.sampler import SequenceSource
    from corpus.tokenizer import load_tokenizer
    from store.errors import InputError

    home = state.home()
    folder, tokenizer, recorded = _domain_folder(domain, run_id)
    if seq_len is None:
        seq_len = state.store().get_run(run_id).spec_json["seq_len"] if run_id else 128
    src = SequenceSource.open(domain, str(folder), seq_len)
    same_data(domain, src, recorded, run_id)
    if not 0 <= seq < src.n:
        raise InputError(f"--seq {seq}: {domain!r} holds sequences 0..{src.n - 1} at seq_len {seq_len}")
    ids = src.rows([seq])[0].tolist()
    tok_path = tokenizer or src.data.manifest.get("tokenizer") or str(home.tokenizer)
    text = load_tokenizer(tok_path).decode(ids, skip_special_tokens=False)
    if as_json:
        print_json({"domain": domain, "seq": seq, "seq_len": seq_len, "tokens": ids, "text": text})
    else:
        console().print(text, markup=False, highlight=False)


def _domain_folder(domain: str, run_id: str | None) -> tuple[Path | str, str | None, str | None]:
    """(folder, the run's tokenizer, the fingerprint of the data the run's rounds read last); the
    last two None without a run."""
    from store.errors import InputError

    if run_id:
        store = state.store()
        run = store.get_run(run_id)
        # where the controller itself said the data was (replay buffers included, local or a URI)
        plans = [r.plan for r in store.rounds(run_id)]
        paths = plans[-1].domain_paths if plans else dict(run.spec_json["domains"])
        if domain not in paths:
            raise InputError(f"{domain!r}: run {run_id} has domains {sorted(paths)}")
        seen = [p.cursors[domain]["data"] for p in plans if domain in p.cursors]
        return paths[domain], run.spec_json["tokenizer"], seen[-1] if seen else None
    from store.names import inside, is_name

    if is_name(domain) and (state.home().data / domain).is_dir():
        return inside(state.home().data, domain), None, None
    if Path(domain).is_dir():
        return Path(domain), None, None
    raise InputError(f"{domain!r}: no prepared domain of that name in {state.home().data} and no such folder")


def cursor_rows(rounds) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Where each domain's reading stands after the last finished round, and when epochs rolled over."""

    latest: dict[str, dict[str, Any]] = {}
    rollovers = []
    for x in rounds:
        if x.status != "finished" or x.result is None:
            continue
        for d, c in x.result.cursors.items():
            if d in latest and c["epoch"] > latest[d]["epoch"]:
                rollovers.append(f"{d}: epoch {c['epoch']} began in round {x.stage_index}.{x.round_index}")
            latest[d] = c
    return latest, rollovers
