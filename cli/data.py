"""`cpt data ...` and `cpt tokenizer ...`: turn text into token shards."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.state import state

data_app = typer.Typer(help="Prepare and inspect token shards.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train tokenizers.", no_args_is_help=True)


@data_app.command("prepare")
def prepare(src: list[str] = typer.Argument(..., help="Text, JSONL(.gz/.zst) or Parquet: files, folders or globs, "
                                             "local or at a URI (s3://, gs://, file://)."),
            domain: str = typer.Option(..., "--domain", "-d", help="Domain name."),
            out: str = typer.Option(None, "--out", help="Output folder or URI (s3://..., gs://...; default "
                                    "CPT_HOME/data/DOMAIN)."),
            tokenizer: Path = typer.Option(None, "--tokenizer", help="tokenizer.json (default CPT_HOME's)."),
            val_fraction: float = typer.Option(0.05, help="Share of documents held out for validation."),
            text_field: str = typer.Option("text", help="JSONL field / Parquet column with the text."),
            seed: int = typer.Option(0, help="Seed of the document-level train/val split."),
            doc_sep: str = typer.Option(None, "--doc-sep", help="Plain text: the string that separates "
                                        "documents (Python escapes like \\n work); default: blank lines."),
            shard_tokens: int = typer.Option(4_000_000, min=1024, help="Tokens per shard."),
            overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
            engine: str = typer.Option(None, help="local (this process, all cores) or ray (Ray Data on the "
                                       "cluster --address or `cpt cluster up` names, else an embedded one); "
                                       "default: ray when a cluster is named, else local."),
            workers: int = typer.Option(None, min=1, help="--engine ray: tokenizer actors (default: the "
                                        "cluster's CPUs)."),
            as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")) -> None:
    """Tokenize documents into Arrow shards + manifest.json (streamed; published only when complete)."""
    import codecs
    import time

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from cli.output import console, fmt_seconds, print_json
    from corpus.ingest import prepare_domain
    from store.errors import InputError
    from store.names import check_name, inside

    home = state.home()
    check_name(domain, "--domain")
    out = out or str(inside(home.data, domain))
    if doc_sep is not None:
        doc_sep = codecs.decode(doc_sep, "unicode_escape")
        if not doc_sep:
            raise InputError("--doc-sep: must not be empty")
    engine = engine or ("ray" if home.ray_address else "local")
    if engine not in ("local", "ray"):
        raise InputError(f"--engine: {engine!r} is not an engine (valid: local, ray)")
    if workers is not None and engine != "ray":
        raise InputError("--workers: only with --engine ray")
    t0 = time.perf_counter()

    def show(n: int, t: int, done: float | None) -> None:
        elapsed = max(time.perf_counter() - t0, 1e-9)
        eta = f", ETA {fmt_seconds(elapsed * (1 - done) / done)}" if done else ""
        progress.update(task, description=f"{domain}: {n:,} docs, {t:,} tokens, {t / elapsed:,.0f} tokens/s{eta}")

    options = dict(val_fraction=val_fraction, seed=seed, text_field=text_field, overwrite=overwrite, doc_sep=doc_sep,
                   shard_tokens=shard_tokens, on_progress=show)
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
                  console=console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"tokenizing {domain} ({engine})", total=None)
        if engine == "ray":
            from corpus.prepare_ray import prepare_ray
            from orchestrator import cluster

            cluster.connect(home, dashboard=False)
            try:
                manifest = prepare_ray(list(src), domain, out, tokenizer or home.tokenizer, workers=workers, **options)
            finally:
                cluster.shutdown()
        else:
            manifest = prepare_domain(list(src), domain, out, tokenizer or home.tokenizer, **options)
    if as_json:
        print_json(manifest)
    else:
        console().print(f"{out}: {manifest['documents']['train']:,} train / {manifest['documents']['val']:,} val "
                        f"docs, {manifest['tokens']['train']:,} / {manifest['tokens']['val']:,} tokens")


@data_app.command("builtin")
def builtin(names: list[str] = typer.Argument(None, help="Built-in domains (default: all)."),
            install: bool = typer.Option(False, help="apt-get install missing text packages (root)."),
            max_chars: int = typer.Option(3_000_000, min=1, help="Characters of text per domain."),
            vocab_size: int = typer.Option(4096, min=300, max=1 << 20, help="Tokenizer vocabulary size "
                                                                                   "(300 to 1,048,576)."),
            overwrite: bool = typer.Option(False, help="Retrain the tokenizer and re-prepare.")) -> None:
    """Prepare the built-in demo domains (real text from the machine) in CPT_HOME/data."""
    from cli.output import console
    from corpus.builtin import prepare_builtins

    home = state.home()
    c = console()
    prepare_builtins(home.data, home.tokenizer, names or None, max_chars, vocab_size, install, overwrite,
                     log=c.print)
    c.print(f"built-in domains ready in {home.data}")


@data_app.command("list")
def list_domains(folder: Path = typer.Argument(None, help="Folder of domains (default CPT_HOME/data)."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """List prepared domains with their token counts."""
    from cli.output import print_json, table
    from corpus.shards import read_manifest
    from store.errors import DataError

    if folder is not None and not folder.is_dir():  # CPT_HOME/data before any prepare is an empty list
        raise DataError(f"{folder}: " + ("is a file, not a folder of domains" if folder.exists()
                                         else "folder does not exist"))
    folder = folder or state.home().data
    rows = []
    for d in sorted(p for p in folder.glob("*") if p.is_dir() and not p.name.startswith(".")):
        try:
            m = read_manifest(d)
        except DataError as exc:
            rows.append({"domain": d.name, "error": str(exc)})
            continue
        rows.append({"domain": d.name, "train_tokens": m["tokens"]["train"], "val_tokens": m["tokens"]["val"],
                     "docs": m["documents"]["train"] + m["documents"]["val"], "tokenizer": m["tokenizer_hash"],
                     "path": str(d)})
    if as_json:
        print_json(rows)
    else:
        table(f"domains in {folder}", ["domain", "train tokens", "val tokens", "docs", "tokenizer"],
              [[r["domain"], r.get("train_tokens"), r.get("val_tokens"), r.get("docs"),
                r.get("tokenizer", r.get("error"))] for r in rows])


@data_app.command("verify")
def verify(folder: str = typer.Argument(..., help="Domain folder or URI."),
           tokenizer: Path = typer.Option(None, "--tokenizer", help="Check against this tokenizer.json "
                                          "(default: the one the manifest names, if it still exists).")) -> None:
    """Check a domain end to end: manifest schema and totals, checksums, token ids within the
    vocabulary, tokenizer hash and size (reads every byte)."""
    from cli.output import console
    from corpus.shards import verify_domain

    m = verify_domain(folder, tokenizer)
    console().print(f"{folder}: ok ({len(m['shards'])} shards, {sum(m['tokens'].values()):,} tokens)")


@tokenizer_app.command("train")
def train(src: list[Path] = typer.Argument(..., help="Text files/folders, JSONL or Parquet to train on."),
          out: Path = typer.Option(None, "--out", help="tokenizer.json path (default CPT_HOME/tokenizer.json)."),
          vocab_size: int = typer.Option(8192, min=300, max=1 << 20, help="Vocabulary size (300 to 1,048,576)."),
          text_field: str = typer.Option("text", help="JSONL field / Parquet column with the text.")) -> None:
    """Train a byte-level BPE tokenizer (HF tokenizers) over the given sources."""
    from cli.output import console
    from corpus.sources import iter_documents
    from corpus.tokenizer import train_tokenizer

    out = out or state.home().tokenizer
    h = train_tokenizer((d for s in src for d in iter_documents(s, text_field)), out, vocab_size)
    console().print(f"wrote {out} (hash {h})")
