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
        ("validate", tmp_path / "bad.yaml"),
        ("validate", tmp_path / "missing.yaml"),
        ("data", "prepare", tmp_path / "nowhere", "--domain", "x", "--tokenizer", synth["tokenizer"]),
        ("data", "verify", tmp_path),
        ("runs", "show", "no-such-run"),
    ]
    for args in cases:
        out = cpt(*args, home=tmp_path / "home")
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.strip().startswith("error: ") and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.count("error:") == 1
    assert not (tmp_path / "home" / "data").exists()  # nothing half-written


def test_unreachable_store_exit_2(tmp_path):
    out = cpt("--store", "postgresql+psycopg2://u:hunter2@127.0.0.1:1/x", "runs", "list", home=tmp_path)
    assert out.returncode == 2 and "cannot open run store" in out.stderr and "hunter2" not in out.stderr


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


def test_db_upgrade_and_runs_list_empty(tmp_path):
    assert cpt("db", "upgrade", home=tmp_path).returncode == 0
    rev = cpt("db", "current", home=tmp_path)
    assert rev.stdout.strip() == "0001"
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
    assert yaml.safe_load(env_spec.read_text())["name"] == "tiny"
