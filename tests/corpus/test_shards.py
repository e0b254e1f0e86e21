import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus.ingest import prepare_domain
from corpus.shards import DomainData, read_manifest, verify_domain
from corpus.sources import iter_documents
from corpus.tokenizer import EOS, load_tokenizer, tokenizer_hash, train_tokenizer
from store.errors import DataError


def _docs(stream: np.ndarray, eos: int) -> list[list[int]]:
    out, cur = [], []
    for t in stream.tolist():
        if t == eos:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    return out


def test_shard_roundtrip_decodes_every_document(tmp_path, synth):
    tok = load_tokenizer(synth["tokenizer"])
    eos = tok.token_to_id(EOS)
    data = DomainData.open("en", synth["domains"]["en"], tokenizer_hash(synth["tokenizer"]))
    decoded = [tok.decode(d) for split in ("train", "val") for a in getattr(data, split) for d in _docs(a, eos)]
    originals = list(iter_documents(synth["raw"]["en"]))
    assert sorted(decoded) == sorted(originals)
    m = data.manifest
    assert m["documents"]["train"] + m["documents"]["val"] == len(originals)
    assert m["tokens"]["train"] == data.tokens("train") and m["tokens"]["val"] == data.tokens("val")
    assert m["documents"]["val"] > 0 and m["tokenizer_hash"] == tokenizer_hash(synth["tokenizer"])
    assert verify_domain(synth["domains"]["en"])["domain"] == "en"


def test_jsonl_and_parquet_inputs(tmp_path, synth):
    texts = [f"document number {i} " * 5 for i in range(40)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)))
    pq.write_table(pa.table({"text": texts}), tmp_path / "b.parquet")
    for name in ("a.jsonl", "b.parquet"):
        m = prepare_domain(tmp_path / name, "x", tmp_path / f"out-{name}", synth["tokenizer"], val_fraction=0.2)
        assert m["documents"]["train"] + m["documents"]["val"] == 40


def test_split_is_deterministic_by_document(tmp_path, synth):
    a = prepare_domain(synth["raw"]["de"], "de", tmp_path / "a", synth["tokenizer"], val_fraction=0.2, seed=3)
    b = prepare_domain(synth["raw"]["de"], "de", tmp_path / "b", synth["tokenizer"], val_fraction=0.2, seed=3)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


@pytest.mark.parametrize("content,match", [
    ('{"text": "ok"}\n{not json}\n', r"bad.jsonl:2: invalid JSON"),
    ('{"body": "no text field"}\n', r"bad.jsonl:1: no string field 'text'"),
])
def test_bad_jsonl_names_file_and_line_and_writes_nothing(tmp_path, synth, content, match):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(DataError, match=match):
        prepare_domain(tmp_path / "bad.jsonl", "x", tmp_path / "out", synth["tokenizer"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_missing_source_and_existing_output(tmp_path, synth):
    with pytest.raises(DataError, match="does not exist"):
        prepare_domain(tmp_path / "nope", "x", tmp_path / "out", synth["tokenizer"])
    with pytest.raises(DataError, match="already exists"):
        prepare_domain(synth["raw"]["en"], "en", synth["domains"]["en"], synth["tokenizer"])


def test_corrupt_and_truncated_shards(tmp_path, synth):
    import shutil

    folder = tmp_path / "en"
    shutil.copytree(synth["domains"]["en"], folder)
    shard = folder / read_manifest(folder)["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(DataError, match=r"corrupt or truncated shard"):
        DomainData.open("en", folder)
    shard.write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match=shard.name):
        DomainData.open("en", folder)
    (folder / "manifest.json").write_text("{")
    with pytest.raises(DataError, match="manifest.json: not valid JSON"):
        DomainData.open("en", folder)
    with pytest.raises(DataError, match="shard folder does not exist"):
        DomainData.open("en", tmp_path / "missing")


def test_tokenizer_mismatch_is_refused(tmp_path, synth):
    other = tmp_path / "other.json"
    train_tokenizer(iter_documents(synth["raw"]["de"]), other, vocab_size=320)
    with pytest.raises(DataError, match="tokenized with tokenizer"):
        DomainData.open("en", synth["domains"]["en"], tokenizer_hash(other))


def test_tokenizer_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        tokenizer_hash(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(DataError, match="not a tokenizers JSON"):
        load_tokenizer(tmp_path / "bad.json")
    h1 = train_tokenizer(["hello world " * 50, "ünïcödé text"], tmp_path / "t.json", vocab_size=300)
    tok = load_tokenizer(tmp_path / "t.json")
    assert tok.decode(tok.encode("emoji 🙂 any bytes").ids) == "emoji 🙂 any bytes"  # byte-level fallback
    assert tokenizer_hash(tmp_path / "t.json") == h1


def test_plain_text_is_split_into_documents_while_streaming(tmp_path, synth):
    (tmp_path / "blank.txt").write_text("first doc\nstill first\n\n\nsecond doc\n  \nthird\n")
    assert list(iter_documents(tmp_path / "blank.txt")) == ["first doc\nstill first\n", "second doc\n", "third\n"]
    # a custom separator, with documents straddling the streaming read blocks
    import corpus.sources as ingest

    docs = [f"doc {i} " + "x" * (i * 37 % 500) for i in range(300)]
    (tmp_path / "sep.txt").write_text("\n%%\n".join(docs))
    old, ingest.READ_CHARS = ingest.READ_CHARS, 1000
    try:
        assert list(iter_documents(tmp_path / "sep.txt", doc_sep="\n%%\n")) == docs
    finally:
        ingest.READ_CHARS = old


def test_compressed_jsonl_and_corrupt_archives(tmp_path, synth):
    import gzip

    import zstandard

    texts = [f"line {i} " * 4 for i in range(30)]
    body = "\n".join(json.dumps({"text": t}) for t in texts).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    for name in ("a.jsonl.gz", "b.jsonl.zst"):
        assert list(iter_documents(tmp_path / name)) == texts
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(body)[:-20])
    with pytest.raises(DataError, match=r"bad.jsonl.gz: corrupt compressed file"):
        list(iter_documents(tmp_path / "bad.jsonl.gz"))
    (tmp_path / "bad.jsonl.zst").write_bytes(b"not zstd at all")
    with pytest.raises(DataError, match=r"bad.jsonl.zst: corrupt compressed file"):
        list(iter_documents(tmp_path / "bad.jsonl.zst"))


def test_shards_have_a_fixed_size(tmp_path, synth):
    m = prepare_domain(synth["raw"]["en"], "en", tmp_path / "out", synth["tokenizer"], val_fraction=0.2,
                       shard_tokens=1024)
    for split in ("train", "val"):
        sizes = [s["tokens"] for s in m["shards"] if s["split"] == split]
        assert len(sizes) > 1 and all(t == 1024 for t in sizes[:-1]) and 0 < sizes[-1] <= 1024
    # the same documents as one big shard, just cut differently
    one = prepare_domain(synth["raw"]["en"], "en", tmp_path / "one", synth["tokenizer"], val_fraction=0.2)
    a, b = DomainData.open("en", tmp_path / "out"), DomainData.open("en", tmp_path / "one")
    assert np.array_equal(np.concatenate(a.train), np.concatenate(b.train))
    assert one["tokens"] == m["tokens"]


def test_a_hugging_face_dataset_folder_reads_only_its_data_files(tmp_path, synth):
    root = tmp_path / "hf-dataset"
    (root / "data").mkdir(parents=True)
    (root / ".cache").mkdir()
    texts = [f"row {i} " * 6 for i in range(20)]
    pq.write_table(pa.table({"content": texts[:10]}), root / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"content": texts[10:]}), root / "data" / "train-00001-of-00002.parquet")
    (root / "README.md").write_text("---\nlicense: mit\n---\n# a dataset card, not a document\n")
    (root / "dataset_info.json").write_text("{}")
    (root / ".cache" / "junk.txt").write_text("hidden")
    assert list(iter_documents(root, text_field="content")) == texts
