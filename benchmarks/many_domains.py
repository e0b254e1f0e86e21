"""The many-domain space of benchmarks/mixing_many.py: 18 domains cut from the built-in text, and its settings.

Domains (no downloads: Debian `fortunes`, `fortunes-de`, `manpages-de`, `python3.11-doc` and the
running Python's standard library, as `cpt data builtin` uses them), each split by source file,
section or package:
  - English prose (fortunes): en-lit, en-wisdom, en-computers, en-science, en-misc
  - English technical (Python docs): doc-library, doc-reference, doc-guides
  - German prose (fortunes-de): de-sprueche, de-witze, de-computer
  - German technical (manpages-de): man-de-user (section 1), man-de-admin (sections 5, 7, 8)
  - Python code (stdlib): py-net, py-core, py-other
  - two domains that help nothing: junk-shuffled (en-misc's tokens shuffled within each document:
    the unigram statistics of English, no language) and junk-dups (16 short documentation pages
    repeated with one token changed per copy: a near-duplicate-heavy crawl)
Settings follow the Data Mixing Agent paper's layout: a source field the model was pre-trained on
(replayed, role 0) and a target field that is new (role 1); the junk domains arrive with the new
data (role 1) but are in neither field's score. Training spaces (12 domains: 2 German-prose
targets, 2 junk, 8 replayed English) are disjoint from the two evaluation settings, which have
other targets and other domain counts: code (13 domains) and German technical (9 domains).
"""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corpus.builtin import FORTUNES, MAN_DE, PYDOC, fortune_docs, man_docs, pydoc_docs, stdlib_files

SOURCES = ["prose-en", "prose-de", "tech-de", "tech-en"]
"""The built-in domains whose Debian packages hold the text cut up here."""

EN = {"en-lit": ["literature", "songs-poems", "love", "art", "goedel"],
      "en-wisdom": ["wisdom", "platitudes", "people", "education", "fortunes", "work"],
      "en-computers": ["computers", "linux", "linuxcookie", "debian", "startrek"],
      "en-science": ["science", "medicine", "definitions", "magic", "law", "politics"],
      "en-misc": ["miscellaneous", "cookie", "kids", "food", "pets", "humorists", "men-women", "news"]}
DE = {"de-sprueche": ["sprueche", "sprichworte", "sprichwortev", "zitate", "letzteworte", "regeln", "murphy"],
      "de-witze": ["witze", "anekdoten", "unfug", "stilblueten", "kinderzitate", "warmduscher", "namen", "quiz"],
      "de-computer": ["computer", "debian", "linuxtag", "ms", "infodrom", "channel-debian.fortunes", "tips",
                      "sicherheitshinweise"]}
DOCS = {"doc-library": ["library"], "doc-reference": ["reference", "c-api", "extending"],
        "doc-guides": ["tutorial", "howto", "faq", "using", "whatsnew", "installing", "distributing"]}
MAN = {"man-de-user": ["man1"], "man-de-admin": ["man5", "man7", "man8"]}
PY_NET = {"email", "http", "urllib", "xml", "json", "html", "xmlrpc", "wsgiref", "socket", "ssl", "smtplib",
          "ftplib", "imaplib", "poplib", "mailbox", "mimetypes", "ipaddress", "selectors", "socketserver"}
PY_CORE = {"asyncio", "concurrent", "multiprocessing", "importlib", "unittest", "logging", "collections",
           "functools", "typing", "dataclasses", "enum", "abc", "threading", "inspect", "ast", "dis"}
BASE = [*EN, *DOCS]
"""What every base model is pre-trained on (the source field)."""
JUNK = ["junk-shuffled", "junk-dups"]


@dataclass(frozen=True)
class Setting:
    """A domain space: new clean domains (the target field), new junk, replayed sources."""

    name: str
    targets: tuple[str, ...]
    junk: tuple[str, ...]
    sources: tuple[str, ...]

    @property
    def new(self) -> list[str]:
        return [*self.targets, *self.junk]

    @property
    def domains(self) -> list[str]:
        return [*self.new, *self.sources]


EVAL = [Setting("code-13", ("py-net", "py-core", "py-other"), tuple(JUNK), tuple(BASE)),
        Setting("de-tech-9", ("man-de-user", "man-de-admin"), tuple(JUNK),
                ("en-lit", "en-computers", "en-misc", "doc-library", "doc-guides"))]


def training_space(k: int) -> Setting:
    """Trajectory k's 12-domain space: 2 of the 3 German-prose domains new, both junk, 8 of the 8
    base domains replayed; which German pair and the order vary with k (none is an evaluation setting)."""
    rng = random.Random(k)
    targets = tuple(rng.sample(sorted(DE), 2))
    return Setting(f"de-prose-12:{'+'.join(targets)}", targets, tuple(JUNK), tuple(rng.sample(BASE, len(BASE))))


def _stdlib(which: str) -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files():
        top = path.relative_to(root).parts[0].removesuffix(".py")
        group = "py-net" if top in PY_NET else "py-core" if top in PY_CORE else "py-other"
        if group == which:
            try:
                yield path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue


def texts(name: str) -> Iterator[str]:
    """The documents of a clean domain, in a fixed order."""
    if name in EN or name in DE:
        folder, files = (FORTUNES, EN[name]) if name in EN else (FORTUNES / "de", DE[name])
        return fortune_docs(p for p in (folder / f for f in files) if p.is_file())
    if name in DOCS:
        return pydoc_docs([p for part in DOCS[name] for p in sorted((PYDOC / part).rglob("*.rst.txt"))])
    if name in MAN:
        return man_docs([p for sec in MAN[name] for p in sorted((MAN_DE / sec).glob("*.gz"))])
    return _stdlib(name)


def build(root: Path, train_tokens: int, val_tokens: int, vocab_size: int = 1024) -> dict[str, dict[str, np.ndarray]]:
    """Tokenize every domain once (cached in `root`): {name: {"train": ids, "val": ids}} (uint16)."""
    from corpus.builtin import install_packages, missing_packages
    from corpus.tokenizer import load_tokenizer, train_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    names = [*EN, *DOCS, *DE, *MAN, "py-net", "py-core", "py-other"]
    cache = root / f"domains-{vocab_size}-{train_tokens}-{val_tokens}.npz"
    if cache.exists():
        z = np.load(cache)
        return {n: {"train": z[f"{n}/train"], "val": z[f"{n}/val"]} for n in [*names, *JUNK]}
    if missing := missing_packages(SOURCES):
        install_packages(missing)
    docs = {n: [d for _, d in zip(range(20_000), texts(n), strict=False)] for n in names}
    for n, d in docs.items():
        random.Random(n).shuffle(d)  # val and train from the whole domain, not its first files
    tok_path = root / f"tokenizer-{vocab_size}.json"
    if not tok_path.exists():
        sample = [d[:4000] for n in names for d in docs[n][:300]]
        train_tokenizer(sample, tok_path, vocab_size=vocab_size)
    tok = load_tokenizer(tok_path)
    eos = tok.token_to_id("<|endoftext|>") or 0
    out: dict[str, dict[str, np.ndarray]] = {}

    def split(ids_per_doc: list[list[int]], name: str) -> None:
        val: list[int] = []
        train: list[int] = []
        for ids in ids_per_doc:
            (val if len(val) < val_tokens else train).extend([*ids, eos])
            if len(train) >= train_tokens:
                break
        if len(train) < train_tokens // 4:
            raise SystemExit(f"{name}: only {len(train)} training tokens (wanted {train_tokens})")
        out[name] = {"train": np.array(train[:train_tokens], np.uint16), "val": np.array(val[:val_tokens], np.uint16)}

    encoded = {n: [e.ids for e in tok.encode_batch(docs[n][:6000])] for n in names}
    for n in names:
        split(encoded[n], n)
    rng = np.random.default_rng(0)
    split([list(rng.permutation(ids)) for ids in encoded["en-misc"]], "junk-shuffled")
    pages = [ids[:400] for ids in encoded["doc-guides"] if len(ids) > 100][:16]
    dups = []
    for i in range(train_tokens // 300 + val_tokens // 300 + 2):
        page = list(pages[i % len(pages)])
        page[rng.integers(len(page))] = int(rng.integers(tok.get_vocab_size()))
        dups.append(page)
    split(dups, "junk-dups")
    np.savez(cache, **{f"{n}/{k}": v for n, d in out.items() for k, v in d.items()})
    return out
