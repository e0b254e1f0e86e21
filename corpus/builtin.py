"""Built-in demo domains made from real text that is on the machine or installable with apt.

- prose-en: English fortunes, one quotation per document (Debian `fortunes`; BSD fortune-mod,
  quotations from many authors).
- prose-de: German fortunes, one per document (Debian `fortunes-de`; GPL-2+).
- tech-de: German manual pages with roff markup stripped (Debian `manpages-de`; GPL-3+).
- tech-en: the Python 3.11 documentation sources (reStructuredText), one page per document
  (Debian `python3.11-doc`; PSF-2.0).
- code-py: the running Python's standard library source, one file per document (PSF-2.0).
"""

from __future__ import annotations

import gzip
import random
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from store.errors import DataError

FORTUNES = Path("/usr/share/games/fortunes")
MAN_DE = Path("/usr/share/man/de")
PYDOC = Path("/usr/share/doc/python3.11/html/_sources")


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    package: str | None
    """Debian package that provides the text (None: always on the machine)."""
    licence: str
    probe: Path
    """A path that exists once the package is installed."""
    docs: Callable[[], Iterator[str]]


def _fortune_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8"))


def fortune_docs(files: Iterable[Path]) -> Iterator[str]:
    """Fortune files -> their quotations, one document each."""
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for doc in re.split(r"^%\s*$", text, flags=re.M):
            if len(doc.strip()) > 20:
                yield doc.strip() + "\n"


def _fortunes(folder: Path) -> Iterator[str]:
    return fortune_docs(_fortune_files(folder))


_ROFF_ESC = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\[&/,:~|^%]|\\\*\(..|\\\*.|\\s[-+]?\d")


def strip_roff(text: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith((".", "'")):
            if line.startswith((".SH", ".SS")):
                out.append("\n" + line.split(None, 1)[-1].strip('"') + "\n")
            continue
        line = _ROFF_ESC.sub("", line).replace("\\-", "-").replace("\\(aq", "'").replace("\\e", "\\")
        out.append(line)
    return "\n".join(out)


def man_docs(files: Iterable[Path]) -> Iterator[str]:
    """Gzipped manual pages -> their text without roff markup, one document each."""
    for path in files:
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        except (OSError, EOFError):
            continue
        doc = strip_roff(text).strip()
        if len(doc) > 200:
            yield doc + "\n"


def _man_de() -> Iterator[str]:
    return man_docs(sorted(MAN_DE.glob("man*/*.gz")))


def pydoc_docs(files: Iterable[Path]) -> Iterator[str]:
    """reStructuredText sources of the Python docs -> one document per page (short ones skipped)."""
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) > 200:
            yield text


def _pydoc() -> Iterator[str]:
    files = sorted(PYDOC.rglob("*.rst.txt"))
    random.Random(0).shuffle(files)
    return pydoc_docs(files)


def stdlib_files() -> list[Path]:
    """The standard library's own modules, sorted (no tests, site-packages, IDLE or lib2to3)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if not {"site-packages", "test", "tests", "idlelib", "lib2to3"} & set(p.relative_to(root).parts))


def _stdlib() -> Iterator[str]:
    files = stdlib_files()
    random.Random(0).shuffle(files)  # a spread over the stdlib, not just the modules starting with 'a'
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            yield text


def _pydoc_topics() -> Iterator[str]:
    """Python's own help topics (what `help("if")` prints): English technical prose that ships
    with every Python, so a demo runs on any OS without installing text packages."""
    import pydoc_data.topics

    for _, text in sorted(pydoc_data.topics.topics.items()):
        chunk: list[str] = []
        for para in text.split("\n\n"):  # documents of a few paragraphs each
            chunk.append(para)
            if sum(map(len, chunk)) > 1500:
                yield "\n\n".join(chunk).strip() + "\n"
                chunk = []
        if sum(map(len, chunk)) > 200:
            yield "\n\n".join(chunk).strip() + "\n"


BUILTINS = {b.name: b for b in [
    Builtin("prose-en", "English fortunes (quotations, jokes, literature)", "fortunes",
            "BSD (fortune-mod), quotations from many authors", FORTUNES / "fortunes",
            lambda: _fortunes(FORTUNES)),
    Builtin("prose-de", "German fortunes (quotations, jokes, anecdotes)", "fortunes-de", "GPL-2+",
            FORTUNES / "de", lambda: _fortunes(FORTUNES / "de")),
    Builtin("tech-de", "German manual pages (technical prose)", "manpages-de", "GPL-3+",
            MAN_DE / "man1", _man_de),
    Builtin("tech-en", "Python 3.11 documentation sources (technical English)", "python3.11-doc", "PSF-2.0",
            PYDOC, _pydoc),
    Builtin("code-py", f"Python {sys.version_info.major}.{sys.version_info.minor} standard library source",
            None, "PSF-2.0", Path(sysconfig.get_paths()["stdlib"]), _stdlib),
    Builtin("docs-py", "Python's built-in help topics (pydoc_data; technical English, on every OS)",
            None, "PSF-2.0", Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py", _pydoc_topics),
]}


def missing_packages(names: list[str]) -> list[str]:
    return [BUILTINS[n].package for n in names if BUILTINS[n].package and not BUILTINS[n].probe.exists()]


def install_packages(packages: list[str]) -> None:
    """apt-get install the text packages (needs root and the Debian mirrors)."""
    if not shutil.which("apt-get"):
        raise DataError(f"packages {packages} are missing and apt-get is not available; install them by hand")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")


def capped(docs: Iterator[str], max_chars: int) -> Iterator[str]:
    total = 0
    for d in docs:
        if total >= max_chars:
            return
        total += len(d)
        yield d


def prepare_builtins(data_dir: Path, tokenizer_path: Path, names: list[str] | None = None,
                     max_chars: int = 3_000_000, vocab_size: int = 4096, install: bool = False,
                     overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Train the shared tokenizer over the built-in domains and prepare each one's shards.

    Already prepared domains with the current tokenizer are kept (idempotent)."""
    from corpus.ingest import prepare_domain
    from corpus.shards import read_manifest
    from corpus.tokenizer import tokenizer_hash, train_tokenizer

    names = names or list(BUILTINS)
    unknown = [n for n in names if n not in BUILTINS]
    if unknown:
        raise DataError(f"unknown built-in domain(s) {unknown}; valid: {sorted(BUILTINS)}")
    missing = missing_packages(names)
    if missing:
        if not install:
            raise DataError(f"built-in domains need Debian packages {missing}: run "
                            f"`apt-get install {' '.join(missing)}` or pass --install")
        log(f"installing {' '.join(missing)} with apt-get")
        install_packages(missing)
    if overwrite or not tokenizer_path.exists():
        log(f"training byte-level BPE tokenizer (vocab {vocab_size}) on {', '.join(names)}")
        per = max(200_000, max_chars // 3)
        train_tokenizer((d for n in names for d in capped(BUILTINS[n].docs(), per)), tokenizer_path, vocab_size)
    tok_hash = tokenizer_hash(tokenizer_path)
    out = {}
    for n in names:
        folder = data_dir / n
        if folder.exists() and not overwrite:
            try:
                if read_manifest(folder)["tokenizer_hash"] == tok_hash:
                    out[n] = folder
                    continue
            except DataError:
                pass
        m = prepare_domain([BUILTINS[n].probe], n, folder, tokenizer_path, val_fraction=0.05, overwrite=True,
                           documents=capped(BUILTINS[n].docs(), max_chars))
        log(f"prepared {n}: {m['documents']['train']}+{m['documents']['val']} docs, "
            f"{m['tokens']['train']:,} train / {m['tokens']['val']:,} val tokens")
        out[n] = folder
    return out
