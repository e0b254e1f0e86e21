"""Where documents come from: files, folders and globs, on local disk or at any URI pyarrow reads.

`cpt data prepare SRC` takes a file, a folder (every file under it; a Hugging Face dataset folder
is its data files only), or a glob (`data/*.jsonl.gz`, `s3://bucket/crawl/**/*.parquet`), local
or remote. Both preparation engines read documents through this module, so a document is the
same whichever engine reads it: JSONL (.jsonl, .jsonl.gz, .jsonl.zst) a line, Parquet a row,
plain text split at a separator (blank lines by default), each streamed (memory stays flat on a
multi-GB file).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from corpus import fs
from store.errors import DataError, first_line

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson")
READ_CHARS = 1 << 20
GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Input:
    """One input file."""

    shown: str
    """The file as messages name it (the user's path or URI, credentials removed)."""
    uri: str
    """A local path or a URI that `open_input` opens (picklable: Ray read tasks get it)."""
    size: int
    """Bytes on storage (compressed size for compressed files): what ETA estimates count."""

    @property
    def plain(self) -> bool:
        """Uncompressed text or JSONL: its characters read measure progress through its bytes."""
        return not self.uri.split("?", 1)[0].lower().endswith((".gz", ".zst", ".parquet"))


def plain_bytes(inputs: list[Input]) -> int | None:
    """Bytes of the inputs when all are plain (progress through them is measurable), else None."""
    return sum(i.size for i in inputs) if inputs and all(i.plain for i in inputs) else None


def list_inputs(src: str | Path) -> list[Input]:
    """The input files of one SRC argument, in a fixed order (sorted paths)."""
    text = str(src)
    if fs.is_remote(text):
        return _remote(text)
    path = fs.local_path(text)
    if GLOB.search(str(path)) and not path.exists():
        root = Path(*_until_glob(path.parts))  # "." when the glob starts the path
        rx = _glob_regex(str(path))
        files = sorted(p for p in root.rglob("*") if p.is_file() and rx.fullmatch(str(p)) and not _hidden(p, root))
        if not files:
            raise DataError(f"{src}: no file matches")
    else:
        files = _files(path)
    return [Input(str(p), str(p.resolve()), p.stat().st_size) for p in files]


def _until_glob(parts: tuple[str, ...]) -> list[str]:
    out = []
    for p in parts:
        if GLOB.search(p):
            break
        out.append(p)
    return out


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Shell globs: `*`, `?` and `[...]` stay inside one path component, `**/` spans any number of folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:  # a class: [0-3], [!x]
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _hidden(p: Path, root: Path) -> bool:
    return any(x.startswith(".") for x in p.relative_to(root).parts)


def _data_files(names: list[str]) -> list[str]:
    # a dataset folder (Hugging Face layout: data/*.parquet beside README.md, dataset_info.json) is
    # its data files only; the card and metadata are not documents
    for kind in (".parquet", JSONL_SUFFIXES):
        data = [n for n in names if n.lower().endswith(kind)]
        if data:
            return data
    return names


def _files(src: Path) -> list[Path]:
    if not src.exists():
        raise DataError(f"{src}: source does not exist")
    if src.is_file():
        return [src]
    files = sorted(p for p in src.rglob("*") if p.is_file() and not _hidden(p, src))
    if not files:
        raise DataError(f"{src}: folder has no files")
    by_name = {str(p): p for p in files}
    return [by_name[n] for n in _data_files(list(by_name))]


def _remote(uri: str) -> list[Input]:
    import pyarrow.fs as pafs

    filesystem, path = fs._filesystem(uri)
    base = uri.split("://", 1)[0] + "://"
    shown = fs._shown(uri)
    try:
        if GLOB.search(path):
            root = "/".join(_until_glob(tuple(path.split("/"))))
            rx = _glob_regex(path)
            infos = [i for i in filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
                     if i.type == pafs.FileType.File and rx.fullmatch(i.path)]
        else:
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise DataError(f"{shown}: source does not exist")
            infos = [info] if info.type == pafs.FileType.File else [
                i for i in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
                if i.type == pafs.FileType.File]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{shown}: cannot list ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    infos = [i for i in infos if not any(x.startswith(".") for x in i.path.split("/"))]
    keep = set(_data_files([i.path for i in infos]))
    infos = sorted((i for i in infos if i.path in keep), key=lambda i: i.path)
    if not infos:
        raise DataError(f"{shown}: no file matches" if GLOB.search(path) else f"{shown}: folder has no files")
    query = ("?" + uri.split("?", 1)[1]) if "?" in uri else ""
    return [Input(fs._shown(base + i.path + query), base + i.path + query, i.size or 0) for i in infos]


def open_input(inp: Input) -> BinaryIO:
    """The raw bytes of an input (no decompression: `documents` does it, the same way for every source)."""
    if not fs.is_remote(inp.uri):
        return open(inp.uri, "rb")
    filesystem, path = fs._filesystem(inp.uri)
    return filesystem.open_input_stream(path, compression=None)


def documents(inp: Input, text_field: str = "text", doc_sep: str | None = None) -> Iterator[str]:
    """The documents of one input file, in file order."""
    name = inp.uri.split("?", 1)[0].lower()
    try:
        if name.endswith(".parquet"):
            yield from _parquet(inp, text_field)
            return
        with open_input(inp) as raw:
            if name.endswith(JSONL_SUFFIXES):
                yield from _jsonl(inp.shown, raw, name, text_field)
            else:
                yield from _text(inp.shown, raw, doc_sep)
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{inp.shown}: cannot read ({exc.strerror or first_line(exc) or type(exc).__name__})") \
            from None


def _text(shown: str, raw: BinaryIO, sep: str | None) -> Iterator[str]:
    try:
        f = io.TextIOWrapper(raw, encoding="utf-8")  # type: ignore[arg-type]
        if sep is None:  # paragraphs: documents end at one or more blank lines
            doc: list[str] = []
            for line in f:
                if line.strip():
                    doc.append(line)
                elif doc:
                    yield "".join(doc)
                    doc = []
            if doc:
                yield "".join(doc)
            return
        tail = ""
        for chunk in iter(lambda: f.read(READ_CHARS), ""):
            *docs, tail = (tail + chunk).split(sep)
            yield from (d for d in docs if d.strip())
        if tail.strip():
            yield tail
    except UnicodeDecodeError as exc:
        raise DataError(f"{shown}: not UTF-8 text (byte {exc.start} of a read block)") from None


def _decompressed(shown: str, raw: BinaryIO, name: str) -> Any:
    if name.endswith(".gz"):
        import gzip

        return gzip.GzipFile(fileobj=raw)
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{shown}: reading .zst needs the zstandard package (pip install zstandard)") from None
        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


def _jsonl(shown: str, raw: BinaryIO, name: str, field: str) -> Iterator[str]:
    import gzip

    try:
        with io.TextIOWrapper(_decompressed(shown, raw, name), encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{shown}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                    raise DataError(f"{shown}:{lineno}: no string field {field!r}")
                if obj[field].strip():
                    yield obj[field]
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"{shown}: corrupt compressed file ({exc})") from None
    except UnicodeDecodeError:
        raise DataError(f"{shown}: not UTF-8 text") from None
    except DataError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard") or (isinstance(exc, OSError) and not exc.strerror):
            raise DataError(f"{shown}: corrupt compressed file ({exc})") from None
        raise


def _parquet(inp: Input, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if fs.is_remote(inp.uri):
            filesystem, path = fs._filesystem(inp.uri)
            pf = pq.ParquetFile(filesystem.open_input_file(path))
        else:
            pf = pq.ParquetFile(inp.uri)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{inp.shown}: not a readable Parquet file ({first_line(exc) or type(exc).__name__})") \
            from None
    if field not in pf.schema_arrow.names:
        raise DataError(f"{inp.shown}: no column {field!r} (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def iter_documents(src: str | Path, text_field: str = "text", doc_sep: str | None = None) -> Iterator[str]:
    """Documents of every input of SRC (a file, folder, glob or URI), in order."""
    for inp in list_inputs(src):
        yield from documents(inp, text_field, doc_sep)
