import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def cpt(*args, home: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "CPT_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120, **kw)


def test_help_imports_no_heavy_modules():
    code = ("import sys, cli.main; heavy = {'torch', 'ray', 'lightning', 'mlflow', 'transformers', 'sqlalchemy'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr


def test_validate_ok_and_json(tmp_path, spec_file):
    out = cpt("validate", spec_file(), "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stages"][1]["replay"]["fraction"] == 0.25


@pytest.mark.parametrize("over,match", [
    ({"stages": [{"name": "a", "domains": ["xx"], "tokens": 100}]}, "stages.0.domains: unknown domain 'xx'"),
    ({"bogus": True}, "bogus: unknown field"),
])
def test_validate_bad_spec_exit_2(tmp_path, spec_file, over, match):
    out = cpt("validate", spec_file(**over), home=tmp_path)
    assert out.returncode == 2
    assert match in out.stderr and "Traceback" not in out.stderr


def test_bad_inputs_exit_2_with_one_message(tmp_path, synth):
    (tmp_path / "bad.yaml").write_text("name: [oops")
    cases = [
        (("validate", tmp_path / "bad.yaml"), "malformed YAML"),
        (("validate", tmp_path / "missing.yaml"), "does not exist"),
        (("data", "prepare", tmp_path / "nowhere", "--domain", "x", "--tokenizer", synth["tokenizer"]), "nowhere"),
        (("data", "verify", tmp_path), "not a prepared domain"),
        (("data", "verify", tmp_path / "bad.yaml"), "is a file, not a shard folder"),
        (("runs", "show", "no-such-run"), "no run 'no-such-run'"),
        (("runs", "events", "no-such-run"), "no run 'no-such-run'"),
        (("agent", "show", tmp_path), "is a folder; give the agent file"),
        (("agent", "train", "-o", tmp_path), "is a directory; give the agent file path"),
        (("agent", "train", "--reward", "accuracy"), "--reward: unknown 'accuracy'; valid: losses, scores"),
        (("tokenizer", "train", synth["raw"]["en"], "--out", tmp_path), "is a directory; give the tokenizer.json"),
        (("data", "list", tmp_path / "nowhere"), "folder does not exist"),
        (("data", "list", tmp_path / "bad.yaml"), "is a file, not a folder of domains"),
        (("data", "prepare", synth["raw"]["en"], "-d", "x", "--engine", "spark", "--tokenizer", synth["tokenizer"]),
         "--engine: 'spark' is not an engine (valid: local, ray)"),
        (("data", "prepare", synth["raw"]["en"], "-d", "x", "--workers", "2", "--tokenizer", synth["tokenizer"]),
         "--workers: only with --engine ray"),
        (("data", "prepare", f"{synth['raw']['en']}/*.none", "-d", "x", "--tokenizer", synth["tokenizer"]),
         "no file matches"),
    ]
    for args, says in cases:
        out = cpt(*args, home=tmp_path / "home")
        assert out.returncode == 2 and says in out.stderr, (args, out.stdout, out.stderr)
        assert out.stderr.strip().startswith("error: ") and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.count("error:") == 1 and says in out.stderr, (args, out.stderr)
    assert not (tmp_path / "home" / "data").exists()  # nothing half-written
    # numbers out of range are usage errors naming the option, before anything runs
    for args in (("runs", "list", "--limit", "0"), ("ui", "--port", "70000"), ("agent", "explore", "x.yaml", "-n", "0"),
                 ("agent", "explore", "x.yaml", "--parallel", "0"), ("data", "builtin", "--max-chars", "0"),
                 ("tokenizer", "train", "x.txt", "--vocab-size", "99999999999"),  # was a Rust abort (134)
                 ("agent", "explore", "x.yaml", "-n", "1000000")):
        out = cpt(*args, home=tmp_path / "home")
        assert out.returncode == 2 and f"Invalid value for '{args[-2]}'" in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_ui_on_a_port_it_cannot_listen_on_exits_2(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        out = cpt("ui", "--port", taken.getsockname()[1], home=tmp_path / "home")
    assert out.returncode == 2 and "cannot listen there" in out.stderr and "Traceback" not in out.stderr


def test_unreachable_store_exit_2(tmp_path):
    out = cpt("--store", "postgresql+psycopg2://u:hunter2@127.0.0.1:1/x", "runs", "list", home=tmp_path)
    assert out.returncode == 2 and "cannot open run store" in out.stderr and "hunter2" not in out.stderr
    for url in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):  # would "work" and keep nothing
        out = cpt("--store", url, "runs", "list", home=tmp_path)
        assert out.returncode == 2 and "in-memory SQLite database keeps nothing" in out.stderr, out.stderr
    (tmp_path / "afile").write_text("x")
    out = cpt("runs", "list", home=tmp_path / "afile")
    assert out.returncode == 2 and "is a file; give a folder" in out.stderr and "Traceback" not in out.stderr


def test_data_prepare_list_and_tokenizer(tmp_path, synth):
    home = tmp_path / "home"
    out = cpt("tokenizer", "train", synth["raw"]["en"], "--vocab-size", "320", home=home)
    assert out.returncode == 0, out.stderr
    out = cpt("data", "prepare", synth["raw"]["en"], "--domain", "en", "--val-fraction", "0.2", "--json", home=home)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["domain"] == "en"
    listed = json.loads(cpt("data", "list", "--json", home=home).stdout)
    assert [d["domain"] for d in listed] == ["en"]
    again = cpt("data", "prepare", synth["raw"]["en"], "--domain", "en", home=home)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    # --overwrite replaces a domain folder, never CPT_HOME, a folder above it or a folder cpt did not write
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    for target, says in ((home, "refusing to replace"), (tmp_path, "refusing to replace"),
                         (tmp_path / "mine", "replaces only a domain folder")):
        out = cpt("data", "prepare", synth["raw"]["en"], "-d", "x", "--out", target, "--overwrite", home=home)
        assert out.returncode == 2 and says in out.stderr, out.stderr
    assert (tmp_path / "mine" / "keep.txt").exists() and (home / "data" / "en" / "manifest.json").is_file()
    out = cpt("data", "prepare", synth["raw"]["en"], "--domain", "en", "--overwrite", home=home)
    assert out.returncode == 0, out.stderr


def test_data_prepare_on_ray_data(tmp_path, synth):
    """`--engine ray` on an embedded Ray (no cluster named): the documents of the local engine."""
    home = tmp_path / "home"
    args = ("data", "prepare", f"{synth['raw']['de']}/doc*.txt", "--tokenizer", synth["tokenizer"], "--val-fraction",
            "0.2", "--json")
    out = cpt(*args, "--domain", "de", "--engine", "ray", "--workers", "1", home=home)
    assert out.returncode == 0, out.stderr
    ray = json.loads(out.stdout)
    local = json.loads(cpt(*args, "--domain", "local", home=home).stdout)
    assert ray["engine"] == "ray" and "engine" not in local
    assert ray["documents"] == local["documents"] and ray["tokens"] == local["tokens"]


def test_db_upgrade_and_runs_list_empty(tmp_path):
    assert cpt("db", "upgrade", home=tmp_path).returncode == 0
    rev = cpt("db", "current", home=tmp_path)
    from store.db import head_revision

    newest = sorted((ROOT / "alembic" / "versions").glob("[0-9]*.py"))[-1].name[:4]  # 0007_....py
    assert rev.stdout.strip() == head_revision() == newest
    out = cpt("runs", "list", "--json", home=tmp_path)
    assert out.returncode == 0 and json.loads(out.stdout) == []


def test_schedule_plot_and_mixers(tmp_path, spec_file):
    png = tmp_path / "lr.png"
    out = cpt("schedule", "plot", spec_file(), "--out", png, home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mixers = json.loads(cpt("mixers", "--json", home=tmp_path).stdout)
    assert {"static", "fixed_replay"} <= {m["name"] for m in mixers}


def test_detach_without_cluster_is_a_clear_error(tmp_path, spec_file):
    env_spec = spec_file()
    out = cpt("submit", env_spec, "--detach", home=tmp_path)
    assert out.returncode == 2 and "needs a Ray cluster" in out.stderr
    assert cpt("runs", "list", "--json", home=tmp_path).stdout.strip() == "[]"  # nothing recorded


def test_a_ray_address_nothing_answers_on_fails_at_once_naming_it(tmp_path, spec_file):
    """Before: a malformed address was a traceback, and one nobody listens on hung in ray.init for
    minutes. Now each is refused before the run is recorded."""
    import json

    from rayhead import free_port

    port = free_port()
    for address, says in ((f"127.0.0.1:{port}", "nothing answers there"), ("127.0.0.1:x", "not a Ray address"),
                          ("bogus", "not a Ray address")):
        out = cpt("--address", address, "submit", spec_file(), "--quiet", home=tmp_path)
        assert out.returncode == 2 and f"--address {address}: {says}" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    assert json.loads(cpt("runs", "list", "--json", home=tmp_path).stdout) == []  # nothing recorded


def _hf_checkpoint(folder: Path, vocab: int) -> Path:
    from workers.model import build_model

    build_model({"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}, vocab, 32, 0) \
        .save_pretrained(folder, safe_serialization=True)
    return folder


def _pickled_checkpoint(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"vocab_size": 400}')
    (folder / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    return folder


def _corrupt_copy(src: Path, dst: Path) -> Path:
    import shutil

    from corpus.shards import read_manifest

    shutil.copytree(src, dst)
    shard = dst / read_manifest(dst)["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    return dst


def _other_tokenizer(tmp: Path, synth) -> str:
    from corpus.sources import iter_documents
    from corpus.tokenizer import train_tokenizer

    train_tokenizer(iter_documents(synth["raw"]["code"]), tmp / "other.json", vocab_size=310)
    return str(tmp / "other.json")


BAD_INPUTS = {
    "negative weights": (lambda t, s: {"stages": [
        {"name": "a", "domains": ["en"], "tokens": 1024},
        {"name": "b", "domains": ["de"], "tokens": 1024,
         "mixer": {"kind": "static", "weights": {"de": 1.5, "en": -0.5}}}]},
        "stages.1.mixer.weights"),
    "weights not summing to 1": (lambda t, s: {"stages": [
        {"name": "a", "domains": ["en"], "tokens": 1024, "mixer": {"kind": "static", "weights": {"en": 0.5}}}]},
        "sum to 1"),
    "unknown mixer": (lambda t, s: {"stages": [{"name": "a", "domains": ["en"], "tokens": 1024,
                                                "mixer": {"kind": "doremi2"}}]}, "unknown mixer 'doremi2'; valid:"),
    "missing shard folder": (lambda t, s: {"domains": {"en": str(t / "gone")},
                                           "stages": [{"name": "a", "domains": ["en"], "tokens": 1024}]},
                             "gone: shard folder does not exist"),
    "truncated shard": (lambda t, s: {"domains": {"en": str(_corrupt_copy(s["domains"]["en"], t / "en"))},
                                      "stages": [{"name": "a", "domains": ["en"], "tokens": 1024}]},
                        "corrupt or truncated shard"),
    "tokenizer mismatch": (lambda t, s: {"tokenizer": _other_tokenizer(t, s)}, "tokenized with tokenizer"),
    "checkpoint of another model": (lambda t, s: {"model": {"path": str(_hf_checkpoint(t / "hf", 999))}},
                                    "vocab_size 999 does not match"),
    "pickled checkpoint": (lambda t, s: {"model": {"path": str(_pickled_checkpoint(t / "bin"))}},
                           "pickled .bin weights are refused"),
    "not a checkpoint": (lambda t, s: {"model": {"path": str(t)}}, "not a Hugging Face checkpoint"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_to_submit_exit_2_and_record_nothing(tmp_path, synth, case):
    over, message = BAD_INPUTS[case]
    spec = tmp_path / "run.yaml"
    from conftest import tiny_spec

    spec.write_text(yaml.safe_dump(tiny_spec(synth, **over(tmp_path, synth))))
    home = tmp_path / "home"
    out = cpt("submit", spec, "--quiet", home=home)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and out.stderr.count("error:") == 1 and "Traceback" not in out.stderr
    assert not (home / "runs").exists()
    assert not (home / "store.db").exists()  # not even an empty store was created
