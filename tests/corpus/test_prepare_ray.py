"""`cpt data prepare --engine ray`: Ray Data on the suite's embedded Ray (2 CPUs), inputs and
outputs on a real S3-compatible server (moto's). The local engine is the reference: the same
documents must land in the same split with the same tokens, however Ray cuts the blocks."""

import gzip
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus.ingest import prepare_domain
from corpus.prepare_ray import prepare_ray
from corpus.shards import DomainData, read_manifest, verify_domain
from corpus.sources import iter_documents
from store.errors import DataError


def documents(folder) -> dict[str, Counter]:
    """Each split's documents as token tuples (documents end at EOS), counted."""
    data = DomainData.open("d", folder)
    eos = data.manifest["eos_id"]
    out = {}
    for split in ("train", "val"):
        flat = np.concatenate(getattr(data, split))
        ends = np.flatnonzero(flat == eos)
        out[split] = Counter(tuple(d) for d in np.split(flat, ends + 1)[:-1])
    return out


@pytest.fixture
def free_cpus():
    from conftest import GROUPS

    GROUPS.close()  # pooled training groups of earlier tests hold the embedded Ray's CPUs


def _upload(s3, path: str, body: bytes) -> None:
    with s3["fs"].open_output_stream(path, compression=None) as f:
        f.write(body)


def test_ray_and_local_engines_give_the_same_documents_from_object_storage(tmp_path, synth, s3, ray_local,
                                                                          free_cpus, monkeypatch):
    monkeypatch.setenv("CPT_CACHE", str(tmp_path / "cache"))
    for p in sorted(Path(synth["raw"]["en"]).iterdir()):  # plain text, a document per paragraph
        _upload(s3, f"corpora/raw/en/{p.name}", p.read_bytes())
    de = list(iter_documents(synth["raw"]["de"]))
    _upload(s3, "corpora/raw/de.jsonl.gz", gzip.compress("\n".join(json.dumps({"text": t}) for t in de).encode()))
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": de[:20] + ["a duplicate document"] * 3}), buf)
    _upload(s3, "corpora/raw/more.parquet", buf.getvalue().to_pybytes())
    src = ["s3://corpora/raw/en/doc00[0-3]*.txt", "s3://corpora/raw/de.jsonl.gz", "s3://corpora/raw/*.parquet"]
    tok = synth["tokenizer"]
    local = prepare_domain(src, "d", tmp_path / "local", tok, val_fraction=0.2)
    _upload(s3, "corpora/ray/train-deadbeef-000000-0000000000-00000.arrow", b"left by a killed attempt")
    seen = []
    ray = prepare_ray(src, "d", "s3://corpora/ray", tok, val_fraction=0.2, workers=2, block_chars=2000,
                      on_progress=lambda *a: seen.append(a))
    assert len(ray["shards"]) > len(local["shards"])  # Ray cut the input into many blocks...
    assert ray["documents"] == local["documents"] and ray["tokens"] == local["tokens"]
    assert documents("s3://corpora/ray") == documents(tmp_path / "local")  # ...the same documents, split alike
    assert sum(documents(tmp_path / "local")["val"].values()) == local["documents"]["val"]
    dup = set(documents(tmp_path / "local")["train"]) & set(documents(tmp_path / "local")["val"])
    assert not dup  # the three copies of one document share a split
    names = {i.base_name for i in s3["fs"].get_file_info(pa.fs.FileSelector("corpora/ray"))}
    assert names == {sh["file"] for sh in ray["shards"]} | {"manifest.json"}  # the stray file is gone
    assert verify_domain("s3://corpora/ray")["domain"] == "d"
    assert seen[-1][:2] == (sum(ray["documents"].values()), sum(ray["tokens"].values()))
    with pytest.raises(DataError, match="already holds a prepared domain"):
        prepare_ray(src, "d", "s3://corpora/ray", tok, val_fraction=0.2)
    with pytest.raises(DataError, match=r"s3://corpora/raw/nothing\*: no file matches"):
        prepare_ray(["s3://corpora/raw/nothing*"], "d", tmp_path / "none", tok)
    assert not (tmp_path / "none").exists()


def test_a_killed_tokenizer_actor_is_retried_and_the_domain_is_the_same(tmp_path, synth, ray_local, free_cpus):
    from ray.util.state import list_actors

    raw = tmp_path / "raw"
    raw.mkdir()
    docs = list(iter_documents(synth["raw"]["en"])) + list(iter_documents(synth["raw"]["de"]))
    for i in range(40):  # ~2 MB of text, in many small blocks: the kill lands while blocks are in flight
        (raw / f"part{i:03d}.jsonl").write_text("\n".join(json.dumps({"text": f"{i} {d}"}) for d in docs * 2))
    local = prepare_domain(raw, "d", tmp_path / "local", synth["tokenizer"], val_fraction=0.1)
    out = tmp_path / "ray"
    (tmp_path / ".ray.tmp-0dead000").mkdir()  # an attempt that died before it cleaned up
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(m=prepare_ray(
        [raw], "d", out, synth["tokenizer"], val_fraction=0.1, workers=2, block_chars=20_000)))
    thread.start()
    killed = None
    deadline = time.time() + 120
    while killed is None and thread.is_alive() and time.time() < deadline:
        staged = list(tmp_path.glob(".ray.tmp-*/*.arrow"))
        actors = [a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
                  if "Encoder" in a.class_name]
        if staged and actors:
            killed = actors[0]
            os.kill(killed.pid, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(300)
    assert killed is not None, "prepare finished before an actor could be killed"
    assert result["m"]["documents"] == local["documents"] and result["m"]["tokens"] == local["tokens"]
    assert documents(out) == documents(tmp_path / "local")
    assert sorted(p.name for p in out.iterdir()) == sorted([sh["file"] for sh in result["m"]["shards"]]
                                                           + ["manifest.json"])
    assert not list(tmp_path.glob(".ray.tmp-*"))
    assert read_manifest(out)["engine"] == "ray"
    (raw / "part999.jsonl").write_text('{"text": "fine"}\n{"text": 7}\n')  # bad input: one message, nothing made
    with pytest.raises(DataError, match=r"part999.jsonl:2: no string field 'text'"):
        prepare_ray([raw], "d", tmp_path / "bad", synth["tokenizer"], workers=2)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))
