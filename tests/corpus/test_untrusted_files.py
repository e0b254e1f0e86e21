"""Files from outside: bounded, typed, and checked end to end; one clear message naming the file."""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

from corpus.shards import DomainData, file_sha256, verify_domain
from corpus.tokenizer import tokenizer_hash
from orchestrator.spec import load_spec, parse_spec
from store.errors import DataError, SpecError


@pytest.mark.parametrize("make,match", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"name: x\x00\x01\x02"), "binary file"),
    (lambda p: p.write_bytes(b"name: \xff\xfe"), "not UTF-8"),
    (lambda p: p.write_text("x: " + "a" * (2 << 20)), "at most"),
])
def test_spec_files_that_are_not_yaml_text(tmp_path, make, match):
    path = tmp_path / "spec.yaml"
    make(path)
    with pytest.raises(SpecError, match=match):
        load_spec(path)


def test_device_files_are_refused_without_reading():
    with pytest.raises(SpecError, match="not a regular file"):
        load_spec("/dev/zero")
    with pytest.raises(DataError, match="not a regular file"):
        tokenizer_hash("/dev/zero")


def test_yaml_aliases_and_deep_nesting_are_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b]\n"
    with pytest.raises(SpecError, match=r"line 2, column \d+: aliases \(\*name\) are not allowed"):
        parse_spec(bomb)
    with pytest.raises(SpecError, match="nested deeper than 32"):
        parse_spec("a: " + "[" * 40 + "]" * 40)


def _copy(synth, tmp_path, name="en"):
    out = tmp_path / name
    shutil.copytree(synth["domains"][name], out)
    return out


def _rewrite(folder, edit):
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_a_manifest_that_lies_about_totals_fails_on_open(tmp_path, synth):
    folder = _copy(synth, tmp_path)
    _rewrite(folder, lambda m: m["tokens"].update(train=m["tokens"]["train"] + 1000))
    with pytest.raises(DataError, match=r"manifest.json: tokens.train says \d+, its shards hold \d+"):
        DomainData.open("en", folder)
    folder = _copy(synth, tmp_path, "de")
    _rewrite(folder, lambda m: m.update(vocab_size="many"))
    with pytest.raises(DataError, match="vocab_size must be an integer"):
        DomainData.open("de", folder)


def test_verify_finds_ids_outside_the_vocabulary_and_a_foreign_tokenizer(tmp_path, synth):
    folder = _copy(synth, tmp_path)
    assert verify_domain(folder)["domain"] == "en"  # the honest copy passes, tokenizer included
    _rewrite(folder, lambda m: m.update(vocab_size=50))  # a lie: ids go up to ~400
    with pytest.raises(DataError, match=r"token id \d+ outside the vocabulary \[0, 50\)"):
        verify_domain(folder)

    folder = _copy(synth, tmp_path, "de")
    shard = next(p for p in folder.iterdir() if p.name.startswith("train-"))
    ids = np.full(100, 10**6, dtype=np.int32)  # a rewritten shard with consistent checksum and totals
    table = pa.Table.from_arrays([pa.array(ids)], names=["tokens"])
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)

    def fix(m):
        for sh in m["shards"]:
            if sh["file"] == shard.name:
                sh["tokens"], sh["sha256"], sh["batches"] = 100, file_sha256(shard), [100]
        m["tokens"]["train"] = sum(sh["tokens"] for sh in m["shards"] if sh["split"] == "train")

    _rewrite(folder, fix)
    DomainData.open("de", folder)  # the cheap checks cannot see it...
    with pytest.raises(DataError, match="outside the vocabulary"):
        verify_domain(folder)  # ...the full one does

    other = tmp_path / "other.json"
    from corpus.sources import iter_documents
    from corpus.tokenizer import train_tokenizer

    train_tokenizer(iter_documents(synth["raw"]["code"]), other, vocab_size=310)
    with pytest.raises(DataError, match="is not the manifest's"):
        verify_domain(_copy(synth, tmp_path, "code"), tokenizer=other)
    os.remove(other)


def test_running_out_of_file_descriptors_says_so_not_corrupt_shard(synth):
    """~500 domains under `ulimit -n 1024` failed as "corrupt or truncated shard"."""
    import subprocess
    import sys

    code = (f"import os, resource\n"
            f"from corpus.shards import DomainData\n"
            f"from corpus.sampler import SequenceSource\n"
            f"from store.errors import DataError\n"
            f"src = SequenceSource.open('en', {str(synth['domains']['en'])!r}, 32)\n"
            f"free = os.open('/dev/null', os.O_RDONLY)\n"  # the lowest free descriptor: none below the limit
            f"os.close(free)\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, (free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
            f"for what in (lambda: src.rows([0]), lambda: DomainData.open('en', {str(synth['domains']['en'])!r})):\n"
            f"    try:\n"
            f"        what()\n"
            f"        print('opened')\n"
            f"    except DataError as exc:\n"
            f"        print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all("too many open files" in x and "ulimit -n" in x for x in lines), out
    assert "corrupt" not in out.stdout


def test_a_shard_listed_twice_or_in_both_splits_is_refused_on_every_open(tmp_path, synth):
    """`cpt data verify` passed a duplicated train shard and a val split pointing at the train shard
    (totals made consistent): data read twice per epoch, or validation on training data."""
    import subprocess
    import sys

    def totals(m):
        for split in ("train", "val"):
            m["tokens"][split] = sum(sh["tokens"] for sh in m["shards"] if sh["split"] == split)

    def duplicate(m):
        m["shards"].append(dict(next(sh for sh in m["shards"] if sh["split"] == "train")))
        totals(m)

    def val_is_train(m):
        train = next(sh for sh in m["shards"] if sh["split"] == "train")
        for sh in m["shards"]:
            if sh["split"] == "val":
                sh.update(file=train["file"], sha256=train["sha256"], tokens=train["tokens"], batches=train["batches"])
        totals(m)

    def copied(m):  # the train shard's bytes under a second name, listed as val
        train = next(sh for sh in m["shards"] if sh["split"] == "train")
        shutil.copy(folder / train["file"], folder / "val-copy.arrow")
        m["shards"] = [sh for sh in m["shards"] if sh["split"] == "train"] + [
            {**train, "file": "val-copy.arrow", "split": "val"}]
        totals(m)

    for i, (change, says) in enumerate([(duplicate, "same file"), (val_is_train, "same file"),
                                        (copied, "same content")]):
        folder = _copy(synth, tmp_path / str(i))
        _rewrite(folder, change)
        with pytest.raises(DataError, match=says):
            DomainData.open("en", folder)
        out = subprocess.run([sys.executable, "-m", "cli.main", "data", "verify", str(folder)], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "CPT_HOME": str(tmp_path / "home")})
        assert out.returncode == 2 and says in out.stderr and "a shard may appear once" in out.stderr, out.stderr
