"""Audits answer about the data the run read, or refuse: after a domain is re-prepared, `cpt runs
samples` and `cpt data show --run` used to return other sequence ids and text with exit 0."""

from __future__ import annotations

import dataclasses
import json
import shutil

from corpus.ingest import prepare_domain
from corpus.sampler import SequenceSource
from orchestrator.home import Home
from store.runs import RunStore
from tests_helpers import cpt, round_plan, round_result


def test_audits_refuse_a_domain_that_changed_since_the_run_read_it(tmp_path, synth):
    folder = tmp_path / "data" / "en"
    shutil.copytree(synth["domains"]["en"], folder)
    home = tmp_path / "home"
    store = RunStore(Home.from_env(home).store_url)
    run_id = store.create_run("r", "name: r", {"seq_len": 32, "tokenizer": str(synth["tokenizer"]),
                                               "domains": {"en": str(folder)}, "stages": [{"rounds": 1}]},
                              str(home / "runs"), [("s", 0, 5, 1)])
    data_id = SequenceSource.open("en", str(folder), 32).data_id
    plan = dataclasses.replace(round_plan(run_id), weights={"en": 1.0}, domain_paths={"en": str(folder)},
                               eval_domains=["en"], cursors={"en": {"epoch": 0, "pos": 0, "data": data_id}},
                               seq_len=32, batch_size=2)
    rid = store.plan_round(plan, {}, None)
    store.start_round(rid)
    store.finish_round(rid, round_result())

    before = cpt(home, "runs", "samples", run_id, "--round", "0.0", "--json")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["en"]["count"] == 10
    assert cpt(home, "data", "show", "en", "--run", run_id, "--seq", "3").returncode == 0

    prepare_domain(synth["raw"]["en"], "en", folder, synth["tokenizer"], val_fraction=0.3, overwrite=True)
    for args in (("runs", "samples", run_id, "--round", "0.0"), ("data", "show", "en", "--run", run_id, "--seq", "3")):
        out = cpt(home, *args)
        assert out.returncode == 2 and "holds other data than run" in out.stderr and data_id in out.stderr, \
            out.stderr
        assert "Traceback" not in out.stderr
