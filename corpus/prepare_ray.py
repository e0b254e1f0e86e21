"""`cpt data prepare --engine ray`: preparation on Ray Data, for corpora one machine cannot tokenize.

The pipeline is Ray Data's: a Datasource whose read tasks stream the documents of groups of
input files (parsed by corpus.sources, exactly as the local engine parses them), then
`map_batches` on an actor pool, each actor loading the tokenizer once, tokenizing a block and
writing its shards straight to the output (a folder every node sees, or object storage). Only
shard metadata comes back to the driver, which writes the manifest last.

The contract is the local engine's: the train/val split is a function of each document's text
(ingest.is_val), so neither block boundaries nor the number of workers change which document
lands where; shard names derive from the first document they hold (input file, position), so a
task Ray Data retries after a worker died rewrites the same files; the manifest's totals are
summed from the shards; nothing is published (local: the temp folder renamed; object storage:
the manifest written) until every shard is written, and files no manifest lists are deleted.

Parallelism is per input file group (a single huge file is read by one task; corpora come as
many files). Multi-node clusters need `--out` on shared or object storage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from corpus import fs
from corpus.ingest import (
    add_documents,
    check_output,
    check_val_fraction,
    existing_remote_domain,
    make_manifest,
    staging_folder,
)
from corpus.shards import SHARD_TOKENS, ShardWriter, publish_folder, write_json_atomic
from corpus.sources import Input, documents, list_inputs, plain_bytes
from store.errors import DataError

BLOCK_CHARS = 4 << 20  # text per block: one tokenize-and-write batch, about a million tokens


class _Documents:
    """A Ray Data Datasource over input files: rows (text, file index, document index)."""

    def __new__(cls, *args: Any, **kwargs: Any):  # subclass lazily: `import ray.data` costs seconds
        from ray.data.block import BlockMetadata
        from ray.data.datasource import Datasource, ReadTask

        class Documents(Datasource):
            def __init__(self, inputs: list[Input], text_field: str, doc_sep: str | None, block_chars: int):
                super().__init__()
                self.inputs, self.text_field, self.doc_sep = inputs, text_field, doc_sep
                self.block_chars = block_chars

            def estimate_inmemory_data_size(self) -> int:
                return sum(i.size for i in self.inputs)

            def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                               data_context: Any = None) -> list[ReadTask]:
                groups: list[list[int]] = [[] for _ in range(max(1, min(parallelism, len(self.inputs))))]
                load = [0] * len(groups)
                for k in sorted(range(len(self.inputs)), key=lambda k: -self.inputs[k].size):  # biggest first
                    g = load.index(min(load))
                    groups[g].append(k)
                    load[g] += self.inputs[k].size
                return [ReadTask(_reader(self.inputs, sorted(g), self.text_field, self.doc_sep, self.block_chars),
                                 BlockMetadata(num_rows=None, size_bytes=load[j], exec_stats=None,
                                               input_files=[self.inputs[k].shown for k in g]))
                        for j, g in enumerate(groups) if g]

        return Documents(*args, **kwargs)


def _reader(inputs: list[Input], files: list[int], text_field: str, doc_sep: str | None,
            block_chars: int) -> Callable[[], Iterator]:
    """Blocks of about `block_chars` of text, across the group's files (many small files make few shards)."""
    def read() -> Iterator:
        import pyarrow as pa

        rows: dict[str, list] = {"text": [], "file": [], "doc": []}
        chars = 0
        for k in files:
            for n, text in enumerate(documents(inputs[k], text_field, doc_sep)):
                rows["text"].append(text)
                rows["file"].append(k)
                rows["doc"].append(n)
                chars += len(text)
                if chars >= block_chars:
                    yield pa.table(rows)
                    rows, chars = {"text": [], "file": [], "doc": []}, 0
        if rows["text"]:
            yield pa.table(rows)
    return read


class Encoder:
    """The actor: the tokenizer loaded once; each batch of documents tokenized and written as shards."""

    def __init__(self, tokenizer: str, out: str, val_fraction: float, seed: int, shard_tokens: int, attempt: str):
        os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")  # one core per actor: the pool is the parallelism
        from corpus.tokenizer import EOS, load_tokenizer

        self.tok = load_tokenizer(tokenizer)
        self.eos = self.tok.token_to_id(EOS)
        self.out, self.val_fraction, self.seed, self.shard_tokens = out, val_fraction, seed, shard_tokens
        self.attempt = attempt

    def __call__(self, batch: Any) -> dict[str, list]:
        texts = batch["text"].to_pylist()
        # named by attempt and first document: a retried block rewrites its own files, never another
        # attempt's (object storage: the live domain's shards stay until the new manifest replaces it)
        key = f"{self.attempt}-{batch['file'][0].as_py():06d}-{batch['doc'][0].as_py():010d}-"
        remote = fs.is_remote(self.out)
        folder = Path(tempfile.mkdtemp(prefix="cpt-shards-")) if remote else Path(self.out)
        try:
            writers = {s: ShardWriter(folder, s, self.shard_tokens, prefix=key) for s in ("train", "val")}
            docs = {"train": 0, "val": 0}
            tokens = add_documents(writers, docs, texts, self.tok.encode_batch(texts), self.eos, self.val_fraction,
                                   self.seed)
            for w in writers.values():
                w.flush()
            shards = writers["train"].shards + writers["val"].shards
            if remote:
                fs.upload_files([folder / sh["file"] for sh in shards], self.out)
        finally:
            if remote:
                shutil.rmtree(folder, ignore_errors=True)
        first = {s: next(i for i, sh in enumerate(shards) if sh["split"] == s) for s in docs if docs[s]}
        return {"shard": shards,
                "docs": [docs[sh["split"]] if first.get(sh["split"]) == i else 0 for i, sh in enumerate(shards)],
                "chars": [sum(map(len, texts)) if i == 0 else 0 for i in range(len(shards))],
                "tokens": [tokens if i == 0 else 0 for i in range(len(shards))]}


def prepare_ray(src: str | Path | list[str | Path], domain: str, out: str | Path, tokenizer_path: str | Path,
                val_fraction: float = 0.05, seed: int = 0, text_field: str = "text", overwrite: bool = False,
                doc_sep: str | None = None, shard_tokens: int = SHARD_TOKENS, workers: int | None = None,
                block_chars: int = BLOCK_CHARS,
                on_progress: Callable[[int, int, float | None], None] | None = None) -> dict[str, Any]:
    """Prepare a domain on the connected Ray cluster (ray.init done by the caller). Returns the manifest."""
    import ray

    from corpus.tokenizer import EOS, load_tokenizer

    check_val_fraction(val_fraction)
    sources = src if isinstance(src, list) else [src]
    inputs = [i for s in sources for i in list_inputs(s)]
    tok = load_tokenizer(tokenizer_path)  # a bad tokenizer fails here, not in every actor
    remote = fs.is_remote(out)
    staging, old = _staging(str(out), overwrite) if remote else (_local_staging(Path(out), overwrite), None)
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    try:
        ds = _pipeline(inputs, text_field, doc_sep, str(tokenizer_path), staging, val_fraction, seed, shard_tokens,
                       workers, block_chars)
        total = plain_bytes(inputs)
        shards, docs, seen = [], {"train": 0, "val": 0}, [0, 0, 0]  # documents, tokens, chars
        for batch in _unwrapped(ds.iter_batches(batch_size=None, batch_format="pyarrow")):
            for row in batch.to_pylist():
                shards.append(row["shard"])
                docs[row["shard"]["split"]] += row["docs"]
                seen[0] += row["docs"]
                seen[1] += row["tokens"]
                seen[2] += row["chars"]
            if on_progress:
                on_progress(seen[0], seen[1], min(seen[2] / total, 1.0) if total else None)
        shards.sort(key=lambda sh: (sh["split"] != "train", sh["file"]))
        manifest = make_manifest(domain, sources, tokenizer_path, tok.get_vocab_size(), tok.token_to_id(EOS),
                                 val_fraction, seed, docs, shards, engine="ray")
        _publish(manifest, staging, str(out), old, overwrite)
    except BaseException:
        _discard(staging, remote, old)
        raise
    return manifest


def _pipeline(inputs: list[Input], text_field: str, doc_sep: str | None, tokenizer: str, staging: str,
              val_fraction: float, seed: int, shard_tokens: int, workers: int, block_chars: int) -> Any:
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # cpt shows tokens/s and ETA itself
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # read tasks ask for a quarter CPU, actors for the rest of a CPU each: all fit on the cluster at once,
    # and the OS shares the cores (a reader waits on storage, an actor tokenizes)
    # a read task per block of input, at least one per worker (if there are as many files)
    tasks = min(len(inputs), max(workers, -(-sum(i.size for i in inputs) // block_chars)))
    env = {"env_vars": storage_env()} if storage_env() else None
    ds = ray.data.read_datasource(_Documents(inputs, text_field, doc_sep, block_chars), override_num_blocks=tasks,
                                  num_cpus=0.25, runtime_env=env)
    return ds.map_batches(Encoder, batch_size=None, batch_format="pyarrow", concurrency=workers, num_cpus=0.75,
                          runtime_env=env,
                          fn_constructor_kwargs={"tokenizer": tokenizer, "out": staging, "val_fraction": val_fraction,
                                                 "seed": seed, "shard_tokens": shard_tokens,
                                                 "attempt": uuid.uuid4().hex[:8]})


STORAGE_ENV = ("AWS_", "GOOGLE_", "GCS_", "AZURE_", "HF_ENDPOINT")


def storage_env() -> dict[str, str]:
    """The driver's object-storage settings (endpoint, credentials), for tasks on nodes that may
    not have them: they reach the storage this process reaches."""
    return {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV)}


def _unwrapped(batches: Iterator) -> Iterator:
    """Ray Data's batches; a DataError raised in a read task or an actor comes out as itself."""
    try:
        yield from batches
    except DataError:
        raise
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, DataError):
                raise DataError(str(cause)) from None
            inner = getattr(cause, "cause", None)
            cause = inner if isinstance(inner, BaseException) and inner is not cause else cause.__cause__
        raise


def _local_staging(out: Path, overwrite: bool) -> str:
    check_output(out, overwrite)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # an earlier attempt killed before it cleaned up
        shutil.rmtree(stale, ignore_errors=True)
    return str(staging_folder(out))


def _live(manifest: dict[str, Any] | None) -> set[str]:
    """The shard files a manifest lists (none without one)."""
    return {sh["file"] for sh in manifest["shards"]} if manifest else set()


def _sweep(uri: str, keep: set[str]) -> None:
    """Delete the files of a remote domain folder that are neither in `keep` nor its manifest."""
    fs.delete_files(uri, [n for n in fs.list_files(uri) if n not in keep and n != "manifest.json"])


def _staging(out: str, overwrite: bool) -> tuple[str, dict[str, Any] | None]:
    """Object storage: shards go straight to `out`; what an earlier failed attempt left there (files
    the current manifest does not list) is deleted first."""
    old = existing_remote_domain(out, overwrite)
    _sweep(out, _live(old))
    return out, old


def _publish(manifest: dict[str, Any], staging: str, out: str, old: dict[str, Any] | None, overwrite: bool) -> None:
    listed = _live(manifest)
    if not fs.is_remote(out):
        for p in Path(staging).iterdir():  # a retried block's partial files
            if p.name not in listed:
                p.unlink()
        write_json_atomic(Path(staging) / "manifest.json", manifest)
        publish_folder(Path(staging), Path(out), overwrite)
        return
    _sweep(out, listed | _live(old))
    with tempfile.TemporaryDirectory(prefix="cpt-manifest-") as tmp:
        write_json_atomic(Path(tmp) / "manifest.json", manifest)
        fs.upload_files([Path(tmp) / "manifest.json"], out)  # the publication: one PUT
    fs.delete_files(out, sorted(_live(old) - listed))


def _discard(staging: str, remote: bool, old: dict[str, Any] | None) -> None:
    if not remote:
        shutil.rmtree(staging, ignore_errors=True)
        return
    with contextlib.suppress(DataError):  # else the next attempt deletes them (see _staging)
        _sweep(staging, _live(old))
