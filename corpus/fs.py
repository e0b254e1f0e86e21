"""Data anywhere: domain folders at any URI that pyarrow's filesystems read.

Plain paths and `file://` URIs are memory-mapped in place. Remote URIs (`s3://`, `gs://`,
`hdfs://`, ...) go through `pyarrow.fs`: the manifest is read directly, and each shard is fetched
once into a node-local cache (`$CPT_HOME/cache/shards/<sha256>.arrow`, or `$CPT_CACHE`), checked
against the manifest's checksum, written atomically, and memory-mapped from there. Training then
never waits on the network after a shard's first touch, and several nodes share one copy of the
data without a shared disk. Credentials and endpoints come from the filesystem's usual sources
(for S3: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, or URI query options
such as `?endpoint_override=...`), never from the spec.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from store.errors import DataError

MAX_MANIFEST_BYTES = 64 << 20
SCHEMES = ("file", "s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")  # what pyarrow.fs.FileSystem opens


def is_uri(location: str | Path) -> bool:
    """A URI with a scheme (file:// included); Windows drive letters and plain paths are not."""
    scheme = urlsplit(str(location)).scheme
    return len(scheme) > 1 and "://" in str(location)


def is_remote(location: str | Path) -> bool:
    return is_uri(location) and urlsplit(str(location)).scheme != "file"


def scheme_problem(location: str, known: tuple[str, ...] = SCHEMES) -> str | None:
    """Why `location` cannot be opened by its scheme (checked when a spec is read, not when the
    first checkpoint is written), or None for a plain path or a known scheme (`+driver` allowed)."""
    if not is_uri(location):
        return None
    parts = urlsplit(location)
    scheme = parts.scheme.split("+")[0].lower()
    if scheme == "file" and parts.netloc not in ("", "localhost"):  # file://dir/x would be /x
        return (f"{location!r}: a file:// URI names a path on this machine, file:///ABSOLUTE/PATH (three "
                f"slashes); {parts.netloc!r} would be taken as a host")
    if scheme in known:
        return None
    return f"unsupported URI scheme {scheme + '://'!r}; use a path or one of: {', '.join(s + '://' for s in known)}"


def local_path(location: str | Path) -> Path:
    """A local folder for a plain path or file:// URI."""
    text = str(location)
    return Path(urlsplit(text).path) if is_uri(text) else Path(text)


def join(location: str | Path, name: str) -> str:
    """`location/name`, keeping a URI's query string (endpoint options) at the end."""
    parts = urlsplit(str(location))
    if not is_uri(location):
        return str(Path(location) / name)
    return parts._replace(path=parts.path.rstrip("/") + "/" + name).geturl()


def _filesystem(uri: str):
    import pyarrow.fs as pafs

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    try:
        if urlsplit(uri).scheme == "s3" and endpoint and "endpoint_override" not in uri:
            parts = urlsplit(uri)
            fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme=urlsplit(endpoint).scheme or "https",
                                   region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
            return fs, parts.netloc + parts.path
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError / ValueError for bad URIs
        raise DataError(f"{_shown(uri)}: cannot open this location ({type(exc).__name__}: {exc})") from None


def _shown(uri: str) -> str:
    from store.secrets import redact

    return redact(uri)


def read_bytes(uri: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
    """A small remote file (a manifest), refusing anything larger than `limit`."""
    fs, path = _filesystem(uri)
    try:
        info = fs.get_file_info(path)
        import pyarrow.fs as pafs

        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{_shown(uri)}: does not exist")
        if info.type != pafs.FileType.File:
            raise DataError(f"{_shown(uri)}: not a file")
        if info.size is not None and info.size > limit:
            raise DataError(f"{_shown(uri)}: {info.size:,} bytes, more than the {limit:,} a manifest may have")
        with fs.open_input_stream(path) as f:
            return f.read()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{_shown(uri)}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def cache_root() -> Path:
    return Path(os.environ.get("CPT_CACHE") or (Path(os.environ["CPT_HOME"]) / "cache" if "CPT_HOME" in os.environ
                                                else Path.home() / ".cache" / "cpt"))


def cache_dir() -> Path:
    return cache_root() / "shards"


fetched = {"files": 0, "bytes": 0}
"""What this process has downloaded into the shard cache (tests and benchmarks count it)."""


def fetch_shard(uri: str, sha256: str) -> Path:
    """A local, checksum-verified copy of a remote shard, downloaded once per node."""
    if not (len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)):
        raise DataError(f"{_shown(uri)}: manifest.json gives no valid sha256 for this shard")
    target = cache_dir() / f"{sha256}.arrow"
    return _once_per_node(target, Path.is_file, lambda: _fetch(uri, sha256, target))


def _once_per_node(target: Path, exists: Callable[[Path], bool], make: Callable[[], object]) -> Path:
    """`target`, made by `make` unless it exists. The processes of a node (its ranks) ask at once: a
    lock file makes one of them make it while the others wait for it."""
    import fcntl

    if exists(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if not exists(target):  # not made by another process of this node meanwhile
            make()
    return target


def _fetch(uri: str, sha256: str, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    fs, path = _filesystem(uri)
    h = hashlib.sha256()
    size = 0
    try:
        with fs.open_input_stream(path) as src, open(tmp, "wb") as dst:
            while chunk := src.read(8 << 20):
                h.update(chunk)
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if h.hexdigest() != sha256:
            raise DataError(f"{_shown(uri)}: checksum does not match manifest.json")
        os.replace(tmp, target)
    except DataError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{_shown(uri)}: cannot fetch shard ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0]})") from None
    finally:
        fetched["files"] += 1
        fetched["bytes"] += size


def upload_files(files: list[Path], uri: str) -> None:
    """Copy local files into the folder at a URI, in the order given."""
    fs, base = _filesystem(uri)
    try:
        fs.create_dir(base, recursive=True)
        for p in files:
            with open(p, "rb") as src, fs.open_output_stream(f"{base.rstrip('/')}/{p.name}") as dst:
                while chunk := src.read(8 << 20):
                    dst.write(chunk)
    except Exception as exc:
        raise DataError(f"{_shown(uri)}: upload failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
            from None


def upload_folder(local: Path, uri: str, last: str = "manifest.json") -> None:
    """Copy a finished local folder to a URI with `last` (its manifest or metadata) written last:
    a reader that sees that file sees every file it describes."""
    files = sorted(p for p in local.iterdir() if p.is_file() and p.name != last)
    upload_files([*files, *([local / last] if (local / last).is_file() else [])], uri)


def local_copy(uri: str, kind: str = "checkpoints") -> Path:
    """A local copy of a remote folder (a checkpoint), downloaded once per node into the cache:
    fetched into a temp folder and renamed, so a copy that exists is complete."""
    target = cache_root() / kind / hashlib.sha256(uri.encode()).hexdigest()[:24]
    return _once_per_node(target, Path.is_dir, lambda: _download(uri, target))


def evict(uri: str, kind: str = "checkpoints") -> None:
    """Drop this node's cached copy of a remote folder (a checkpoint restored from, no longer needed)."""
    import shutil

    shutil.rmtree(cache_root() / kind / hashlib.sha256(uri.encode()).hexdigest()[:24], ignore_errors=True)


def _download(uri: str, target: Path) -> Path:
    import shutil

    fs, base = _filesystem(uri)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        import pyarrow.fs as pafs

        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        files = [i for i in infos if i.type == pafs.FileType.File]
        if not files:
            raise DataError(f"{_shown(uri)}: no such folder, or it is empty")
        for info in files:
            with fs.open_input_stream(info.path) as src, open(tmp / info.base_name, "wb") as dst:
                while chunk := src.read(8 << 20):
                    dst.write(chunk)
        os.replace(tmp, target)
    except DataError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{_shown(uri)}: cannot download ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
            from None
    return target


def list_folders(location: str) -> list[str]:
    """Names of the sub-folders of a local folder or a URI ([] if it does not exist)."""
    if not is_remote(location):
        folder = local_path(location)
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    import pyarrow.fs as pafs

    return sorted(i.base_name for i in _entries(location) if i.type == pafs.FileType.Directory)


def _entries(uri: str) -> list:
    """The file infos directly in a remote folder ([] if it does not exist)."""
    import pyarrow.fs as pafs

    fs, base = _filesystem(uri)
    try:
        return fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except Exception as exc:
        raise DataError(f"{_shown(uri)}: cannot list ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
            from None


def probe_writable(location: str) -> None:
    """Write and delete a small file in the folder at `location` (a path or any URI): DataError
    naming it if it cannot be reached or written. Asked before the first round, not after it."""
    name = f".cpt-probe-{uuid.uuid4().hex[:12]}"
    try:
        if not is_remote(location):
            folder = local_path(location)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"cpt")
            (folder / name).unlink()
            return
        fs, base = _filesystem(location)
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(f"{base.rstrip('/')}/{name}") as out:
            out.write(b"cpt")
        fs.delete_file(f"{base.rstrip('/')}/{name}")
    except DataError:
        raise
    except Exception as exc:  # OSError, pyarrow's errors: unreachable, denied, no such bucket, read-only
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{_shown(str(location))}: cannot write there ({type(exc).__name__}: {first[:300]})") \
            from None


def delete_folder(uri: str) -> None:
    """Remove a remote folder (retention); a folder already gone is fine."""
    fs, base = _filesystem(uri)
    try:
        fs.delete_dir(base)
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise DataError(f"{_shown(uri)}: cannot delete ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
            from None


def list_files(uri: str) -> list[str]:
    """Names of the files directly in a remote folder ([] if it does not exist)."""
    import pyarrow.fs as pafs

    return sorted(i.base_name for i in _entries(uri) if i.type == pafs.FileType.File)


def delete_files(uri: str, names: list[str]) -> None:
    """Remove files of a remote folder (a file already gone is fine)."""
    fs, base = _filesystem(uri)
    for name in names:
        try:
            fs.delete_file(f"{base.rstrip('/')}/{name}")
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise DataError(f"{_shown(join(uri, name))}: cannot delete ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0]})") from None
