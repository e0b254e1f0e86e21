"""Tiny synthetic domains for tests: two word-salad 'languages' with different vocabularies."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

WORDS = {
    "en": (
        "the a of and to in is was he she it that with for on as his her they at by this had from  "
        "but not what all were when we there can an your which their said if do will each about  "
        "how up out them then many some so these would other into has more two like him see time  "
        "could"
    ).split(),
    "de": (
        "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es  "
        "an werden aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen so  "
        "zum war haben nur oder aber vor zur bis mehr durch man sein wurde sei prozent hatte kann  "
        "gegen"
    ).split(),
    "code": (
        "def return if else for in range self import from class none true false while try except  "
        "with as yield lambda pass break continue raise assert len print list dict int str"
    ).split(),
}


def write_corpus(folder: Path, lang: str, docs: int = 60, seed: int = 0) -> Path:
    rng = random.Random(f"{lang}:{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    words = WORDS[lang]
    for i in range(docs):
        sents = []
        for _ in range(rng.randint(4, 10)):
            n = rng.randint(5, 14)
            sents.append(" ".join(rng.choice(words) for _ in range(n)).capitalize() + ".")
        (folder / f"doc{i:04d}.txt").write_text(" ".join(sents) + "\n")
    return folder


def make_domains(root: Path, langs: tuple[str, ...] = ("en", "de"), docs: int = 60, vocab: int = 400) -> dict:
    """Raw corpora, a tokenizer and prepared shard folders under root; returns paths."""
    from corpus.ingest import prepare_domain
    from corpus.sources import iter_documents
    from corpus.tokenizer import train_tokenizer

    raws = {lang: write_corpus(root / "raw" / lang, lang, docs) for lang in langs}
    tok = root / "tokenizer.json"
    train_tokenizer((d for r in raws.values() for d in iter_documents(r)), tok, vocab_size=vocab)
    out = {}
    for lang, raw in raws.items():
        prepare_domain(raw, lang, root / "data" / lang, tok, val_fraction=0.2)
        out[lang] = root / "data" / lang
    return {"tokenizer": tok, "domains": out, "raw": raws}


TASK = "cpt_synth_german"


def mc_task(folder: Path, words: dict, n: int = 120, name: str = TASK, data: Path | None = None) -> Path:
    """An lm-eval task folder: n items, a German context and two continuations, the German one right."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for _ in range(n):
        de = " ".join(rng.choice(words["de"]) for _ in range(6)).capitalize()
        right = " ".join(rng.choice(words["de"]) for _ in range(5))
        wrong = " ".join(rng.choice(words["en"]) for _ in range(5))
        gold = rng.randrange(2)
        items.append({"context": de, "choices": [right, wrong] if gold == 0 else [wrong, right], "gold": gold})
    path = data or folder / "items.jsonl"
    if data is None:
        path.write_text("\n".join(json.dumps(i) for i in items))
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}))
    return folder
