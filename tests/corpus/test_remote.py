"""Data anywhere: domains on a real S3-compatible server (moto's, started here), read through
pyarrow's S3 filesystem; nothing in the filesystem layer is mocked."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from corpus.sampler import SequenceSource
from corpus.shards import DomainData, read_manifest, verify_domain
from store.errors import DataError
from tests_helpers import cpt


def test_prepare_to_s3_and_read_back_identical(tmp_path, synth, s3):
    home = tmp_path / "home"
    out = cpt(home, "data", "prepare", str(synth["raw"]["en"]), "--domain", "en", "--out", "s3://corpora/en",
              "--tokenizer", str(synth["tokenizer"]), "--val-fraction", "0.2", env=s3["env"])
    assert out.returncode == 0, out.stderr
    again = cpt(home, "data", "prepare", str(synth["raw"]["en"]), "--domain", "en", "--out", "s3://corpora/en",
                "--tokenizer", str(synth["tokenizer"]), "--val-fraction", "0.2", env=s3["env"])
    assert again.returncode == 2 and "already holds a prepared domain" in again.stderr
    remote = DomainData.open("en", "s3://corpora/en")
    local = DomainData.open("en", synth["domains"]["en"])
    assert read_manifest("s3://corpora/en")["shards"] == read_manifest(synth["domains"]["en"])["shards"]
    assert np.array_equal(np.concatenate(remote.train), np.concatenate(local.train))
    a, b = SequenceSource(remote, 16), SequenceSource(local, 16)
    assert a.data_id == b.data_id and np.array_equal(a.rows(np.arange(a.n)), b.rows(np.arange(b.n)))
    cached = sorted(os.listdir(os.path.join(s3["cache"], "shards")))
    assert len(cached) == len(remote.manifest["shards"])  # fetched once, by checksum
    assert verify_domain("s3://corpora/en")["domain"] == "en"


def test_a_tampered_or_missing_remote_domain_is_a_clear_error(tmp_path, synth, s3, monkeypatch):
    monkeypatch.setenv("CPT_CACHE", str(tmp_path / "fresh-cache"))
    fs = s3["fs"]
    fs.create_dir("corpora/bad")
    manifest = read_manifest(synth["domains"]["de"])
    for sh in manifest["shards"]:
        with fs.open_output_stream(f"corpora/bad/{sh['file']}") as f:
            f.write(b"not the shard" * 10)
    with fs.open_output_stream("corpora/bad/manifest.json") as f:
        f.write(json.dumps(manifest).encode())
    bad = DomainData.open("de", "s3://corpora/bad")  # sized from its manifest: nothing fetched yet
    with pytest.raises(DataError, match=r"s3://corpora/bad/train-00000.arrow: checksum does not match"):
        SequenceSource(bad, 16).rows(np.arange(2))
    assert not list((tmp_path / "fresh-cache" / "shards").glob("*.arrow"))  # nothing half-fetched kept
    with pytest.raises(DataError, match=r"s3://corpora/nothing/manifest.json: does not exist"):
        DomainData.open("x", "s3://corpora/nothing")


@pytest.mark.e2e
def test_a_run_trains_on_domains_in_s3(tmp_path, synth, s3):
    """A run of 2 ranks reads its domains from S3 (ranks fetch shards into their node cache) and
    writes its sharded checkpoints there (each rank uploads its own part). The cursors name the same
    data ids as the local copies, so every batch is the one a local run trains on (the sampler tests
    show batches are a pure function of ids, cursors and weights). Stopped after stage 1 and
    resumed, both ranks of the node restore from S3 through one download, dropped after."""
    import signal

    from conftest import tiny_spec
    from corpus import fs
    from tests_helpers import cpt_until_round_runs

    for d in ("en", "de"):  # what `cpt data prepare --out s3://` writes (the test above shows they are equal)
        fs.upload_folder(Path(synth["domains"][d]), f"s3://corpora/run-{d}", last="manifest.json")
    spec = tiny_spec(synth, checkpoints={"keep_last": 1, "uri": "s3://corpora/ckpts"},
                     resources={"workers": 2, "cpus_per_worker": 1})
    spec["domains"] = {"en": "s3://corpora/run-en", "de": "s3://corpora/run-de"}
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc, store, run_id = cpt_until_round_runs(tmp_path / "home", ["submit", str(path), "--quiet"], finished=2,
                                               env=s3["env"], timeout=600)
    proc.send_signal(signal.SIGTERM)  # a preempted controller: its in-flight round re-runs on resume
    assert proc.wait(timeout=120) == 143
    run = cpt(tmp_path / "home", "runs", "resume", run_id, "--quiet", env=s3["env"], timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    cached = Path(s3["cache"]) / "checkpoints"
    assert not [p for p in cached.iterdir() if not p.name.startswith(".")], list(cached.iterdir())  # evicted
    shown = json.loads(cpt(tmp_path / "home", "runs", "show", run_id, "--json").stdout)
    shown["rounds"] = [r for r in shown["rounds"] if r["status"] == "finished"]
    assert [r["status"] for r in shown["rounds"]] == ["finished"] * 4
    local = {d: SequenceSource.open(d, str(synth["domains"][d]), 32).data_id for d in ("en", "de")}
    assert {d: c["data"] for d, c in shown["data"]["cursors"].items()} == local
    first, last = shown["rounds"][0]["eval_losses"], shown["rounds"][-1]["eval_losses"]
    assert last["de"] < first["de"] - 0.2
    # checkpoints went to S3 under the run's id; retention kept the last round and the stage ends
    ckpts = [r["checkpoint"] for r in shown["rounds"]]
    assert all(c.startswith(f"s3://corpora/ckpts/{run_id}/s") for c in ckpts)
    import pyarrow.fs as pafs

    listed = s3["fs"].get_file_info(pafs.FileSelector(f"corpora/ckpts/{run_id}", recursive=True))
    folders = sorted({i.path.split("/")[3] for i in listed if i.type == pafs.FileType.File})
    assert folders == [Path(c).name for c in (ckpts[1], ckpts[3])]  # stage 1's end and the last round
    names = sorted(i.base_name for i in listed if i.path.split("/")[3] == folders[0] and i.type == pafs.FileType.File)
    assert names == ["__0_0.distcp", "__1_0.distcp", "index.json", "meta.json"]  # each rank its own part
    from workers.export import export_hf  # the CLI's export (tests/workers/test_export.py), in-process here

    export_hf(ckpts[-1], tmp_path / "hf", spec["tokenizer"])
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert len(shown["rounds"]) == 4 and all(r["workers"] == 2 for r in shown["rounds"])


def test_a_checkpoint_round_trips_through_s3(tmp_path, s3):
    import torch

    from workers.checkpoint import read_checkpoint, read_meta, save_state

    model = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    opt = {"w::exp_avg": torch.randn(4, 3)}
    uri = "s3://corpora/unit/ckpt-a"
    save_state(uri, model, opt, {"w": 3.0}, {"model_signature": "sig"}, tied=False)
    state, (tensors, steps) = read_checkpoint(uri, "sig", with_optimizer=True)
    assert torch.equal(state["w"], model["w"]) and torch.equal(tensors["w::exp_avg"], opt["w::exp_avg"])
    assert steps == {"w": 3.0} and read_meta(uri)["model_signature"] == "sig"
    with pytest.raises(DataError, match="no such folder"):
        read_meta("s3://corpora/unit/nothing-here")


def test_a_replay_buffer_lives_in_s3(tmp_path, synth, s3):
    from corpus.replay import ReplayBuffer, fill_buffer
    from corpus.sampler import SequenceSource

    rows = [np.full(17, i, dtype=np.int32) for i in range(30)]
    uri = "s3://corpora/runs/r1/replay/en"
    buf = fill_buffer(uri, "replay/en", str(synth["domains"]["en"]), {"tokens": 17 * 10}, 16, iter(rows), 0, 0,
                      "stage-0")
    assert buf.tokens() == 170
    again = fill_buffer(uri, "replay/en", str(synth["domains"]["en"]), {"tokens": 17 * 10}, 16, iter(rows), 0, 0,
                        "stage-0")
    assert again.seen == 30  # idempotent per stage, read back from S3
    loaded = ReplayBuffer.load(uri)
    assert np.array_equal(loaded.seqs, buf.seqs)
    src = SequenceSource.open("replay/en", uri, 16)
    assert src.aligned and src.n == 10 and {int(r[0]) for r in src.rows(np.arange(10))} == set(buf.seqs[:, 0])
    more = fill_buffer(uri, "replay/en", str(synth["domains"]["en"]), {"tokens": 17 * 10}, 16,
                       iter([np.full(17, 99, dtype=np.int32)] * 5), 0, 1, "stage-1")
    reread = ReplayBuffer.load(uri)
    assert more.seen == reread.seen == 35 and reread.filled_from == ["stage-0", "stage-1"]
    assert np.array_equal(reread.seqs, more.seqs)


def test_remote_domains_are_sized_from_the_manifest_and_fetched_per_read(tmp_path, synth, s3, monkeypatch):
    """Validation (what `cpt submit` and the controller run) downloads nothing; a rank fetches only
    the shards holding its rows, each once; the processes of a node share one download."""
    import subprocess
    import sys

    from conftest import tiny_spec
    from corpus import fs
    from corpus.ingest import prepare_domain
    from corpus.sampler import RoundSampler, ValBatches
    from orchestrator.data_check import check_data
    from orchestrator.spec import load_spec

    monkeypatch.setenv("CPT_CACHE", str(tmp_path / "cache"))
    for d in ("en", "de"):  # many small shards, so "only the shards read" means something
        prepare_domain(synth["raw"][d], d, f"s3://corpora/lazy-{d}", synth["tokenizer"], val_fraction=0.2,
                       shard_tokens=500)
    spec = tiny_spec(synth)
    spec["domains"] = {d: f"s3://corpora/lazy-{d}" for d in ("en", "de")}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    fs.fetched.update(files=0, bytes=0)
    check_data(load_spec(tmp_path / "s.yaml")[0])  # validate / submit
    sources = {d: SequenceSource.open(d, f"s3://corpora/lazy-{d}", 32) for d in ("en", "de")}  # the controller
    assert fs.fetched == {"files": 0, "bytes": 0} and not (tmp_path / "cache").exists()

    shards = {d: [sh for sh in s.data.manifest["shards"] if sh["split"] == "train"] for d, s in sources.items()}
    assert min(len(v) for v in shards.values()) >= 4
    sampler = RoundSampler.fresh(sources, {"en": 0.5, "de": 0.5}, batch_size=8, steps=1)
    ids, dom = sampler.step_ids(0)
    mine = {(sampler.names[d], int(np.searchsorted(sources[sampler.names[d]].offsets, i, side="right") - 1))
            for i, d in zip(ids[:4], dom[:4], strict=True)}  # rank 0 of 2: the first half of the rows
    sampler.batch(0, rank=0, world=2)
    sizes = {(d, k): s3["fs"].get_file_info(f"corpora/lazy-{d}/{shards[d][k]['file']}").size for d, k in mine}
    assert fs.fetched == {"files": len(mine), "bytes": sum(sizes.values())}
    assert len(mine) < sum(len(v) for v in shards.values())  # not every shard
    sampler.batch(0, rank=0, world=2)
    assert fs.fetched["files"] == len(mine)  # read again: from the cache

    val = ValBatches(sources["en"].data, 32, 4, 2)
    before = fs.fetched["files"]
    val[0]
    assert 1 <= fs.fetched["files"] - before < len(sources["en"].data.manifest["shards"]) - len(shards["en"])

    # two processes of a node ask for the same shard at once: one downloads it
    last = shards["de"][-1]
    code = (f"from corpus import fs; fs.fetch_shard('s3://corpora/lazy-de/{last['file']}', '{last['sha256']}'); "
            f"print(fs.fetched['files'])")
    env = {**os.environ, "CPT_CACHE": str(tmp_path / "node-cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    assert sorted(int(p.communicate(timeout=60)[0]) for p in procs) == [0, 0, 1]
