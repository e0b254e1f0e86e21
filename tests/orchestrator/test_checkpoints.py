"""Checkpoint storage on the controller's side: where attempts go and what retention deletes,
under every kind of `checkpoints.uri` (none, a plain shared folder, file://, an object store with
a query string), and one download per node however many ranks restore at once."""

import multiprocessing as mp
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import recorded_run, tiny_spec
from orchestrator import checkpoints
from orchestrator.spec import parse_spec

KINDS = ["run folder", "shared folder", "file uri", "s3 uri"]


def _location(kind: str, tmp_path: Path, s3) -> str | None:
    if kind == "run folder":
        return None
    if kind == "shared folder":
        return str(tmp_path / "shared")
    if kind == "file uri":
        return f"file://{tmp_path / 'shared'}"
    s3["fs"].create_dir("ckpts")
    return f"s3://ckpts/team?endpoint_override={s3['env']['AWS_ENDPOINT_URL']}&scheme=http"


def _exists(base: str, name: str) -> bool:
    from corpus import fs

    return name in fs.list_folders(base)


@pytest.mark.parametrize("kind", KINDS)
def test_retention_deletes_every_unkept_attempt_and_nothing_else(kind, tmp_path, synth, request):
    from corpus import fs

    s3 = request.getfixturevalue("s3") if kind == "s3 uri" else None
    uri = _location(kind, tmp_path, s3)
    raw = tiny_spec(synth, checkpoints={"keep_last": 1, **({"uri": uri} if uri else {})})
    home, store, run_id = recorded_run(tmp_path / "home", raw)
    spec = parse_spec(yaml.safe_dump(raw))
    workdir = Path(store.get_run(run_id).workdir)
    base = checkpoints.run_folder(spec, workdir, run_id)
    if kind in ("shared folder", "file uri"):
        assert base == str(tmp_path / "shared" / run_id)  # a local path, never a relative "file:/..."
    # published attempts: a failed one and its retry, then finished rounds, then one still being written
    names = ["s0-r0-a1", "s0-r0-a2", "s0-r1-a1", "s1-r0-a1", "s1-r1-a1", "notes"]
    for name in names:
        staged = tmp_path / "staged" / name
        staged.mkdir(parents=True)
        (staged / "meta.json").write_text("{}")
        if fs.is_remote(base):
            fs.upload_files([staged / "meta.json"], fs.join(base, name))
        else:
            Path(base, name).mkdir(parents=True)
            (Path(base, name) / "meta.json").write_text("{}")
    from dataclasses import replace

    from tests_helpers import round_plan, round_result

    for (i, r, a), status in [((0, 0, 1), "failed"), ((0, 0, 2), "finished"), ((0, 1, 1), "finished"),
                              ((1, 0, 1), "finished")]:
        plan = replace(round_plan(run_id, i, r, a), checkpoint_dir=checkpoints.location(spec, workdir, run_id,
                                                                                  f"s{i}-r{r}-a{a}"))
        rid = store.plan_round(plan, {}, None)
        store.start_round(rid)
        if status == "finished":
            store.finish_round(rid, replace(round_result(), checkpoint=plan.checkpoint_dir))
        else:
            store.fail_round(rid, "lost")
    said = []
    checkpoints.prune(store, spec, workdir, run_id, said.append)
    assert not said
    kept = [n for n in names if _exists(base, n)]
    # the last round (resume's start) and stage 0's end stay; the attempt in flight and a folder
    # not named like an attempt are left alone; the round superseded by later ones and the failed
    # attempt that had published go
    assert kept == ["s0-r1-a1", "s1-r0-a1", "s1-r1-a1", "notes"], (kind, kept)


def _fetch(args):
    uri, cache, env = args
    import os

    os.environ.update(env)
    os.environ["CPT_CACHE"] = cache
    from corpus import fs

    folder = fs.local_copy(uri)
    return str(folder), sorted(p.name for p in folder.iterdir()), (folder / "big.bin").stat().st_size


def test_ranks_of_one_node_restoring_together_download_once(tmp_path, s3, monkeypatch):
    """Four processes (a node's ranks) ask for the same remote checkpoint at once: one downloads,
    the others wait for its copy (before: all but the first failed renaming onto the finished copy)."""
    from corpus import fs

    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "big.bin").write_bytes(b"x" * (8 << 20))
    (src / "meta.json").write_text("{}")
    s3["fs"].create_dir("restore")
    uri = "s3://restore/run/s0-r0-a1"
    fs.upload_folder(src, uri, last="meta.json")
    cache = str(tmp_path / "node-cache")
    with mp.get_context("spawn").Pool(4) as pool:
        got = pool.map(_fetch, [(uri, cache, s3["env"])] * 4)
    assert len({g[0] for g in got}) == 1 and all(g[1:] == (["big.bin", "meta.json"], 8 << 20) for g in got)
    copies = [p for p in Path(cache, "checkpoints").iterdir() if not p.name.startswith(".")]
    assert len(copies) == 1 and not [p for p in Path(cache, "checkpoints").glob(".*.tmp")]
    monkeypatch.setenv("CPT_CACHE", cache)
    fs.evict(uri)  # what a restore does once every rank of the node has read it
    assert not Path(got[0][0]).exists()


_FORMS = ["file://{abs}", "file://localhost{abs}", "{abs}", "rel/{name}", "./{name}", "~/cpt-probe-{name}",
          "file://{name}/x", "file:/{name}", "ftp://h/{name}", "http://h/{name}", "mem://{name}", "file:{name}"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(form=st.sampled_from(_FORMS), name=st.from_regex(r"[a-z][a-z0-9_-]{0,11}", fullmatch=True))
def test_every_checkpoint_uri_form_is_handled_end_to_end_or_refused_at_validation(tmp_path_factory, synth, form,
                                                                                 name):
    """`checkpoints.uri: file:///ABS` once put checkpoints in Ray's temp folder (taken as the relative
    path `file:/ABS`) while the store pointed at paths that never existed. Each form is now either
    refused when the spec is read, or a location whose folder the controller, the ranks and
    retention all resolve to the same absolute path, and which the checks before round 0 write to."""
    from corpus import fs
    from orchestrator.data_check import check_data
    from store.errors import SpecError

    root = tmp_path_factory.mktemp("uri")
    uri = form.format(abs=str(root / name), name=name)
    raw = tiny_spec(synth, checkpoints={"uri": uri})
    try:
        spec = parse_spec(yaml.safe_dump(raw), base=root)
    except SpecError as exc:
        assert "file:///ABSOLUTE/PATH" in str(exc) or "unsupported URI scheme" in str(exc), exc
        assert form in ("file://{name}/x", "ftp://h/{name}", "http://h/{name}", "mem://{name}")
        return
    assert form not in ("file://{name}/x", "ftp://h/{name}", "http://h/{name}", "mem://{name}")
    folder = checkpoints.run_folder(spec, root / "work", "RUN")
    assert not fs.is_remote(folder) and Path(folder).is_absolute()
    expected = {"file://{abs}": root / name, "file://localhost{abs}": root / name, "{abs}": root / name,
                "rel/{name}": root / "rel" / name, "./{name}": root / name,
                "~/cpt-probe-{name}": Path.home() / f"cpt-probe-{name}", "file:/{name}": root / f"file:/{name}",
                "file:{name}": root / f"file:{name}"}[form]
    assert Path(folder) == expected.resolve() / "RUN"
    check_data(spec)  # the probe writes there (and leaves nothing)
    assert list(expected.iterdir()) == []
    expected.rmdir()


def test_a_checkpoint_location_that_cannot_be_written_is_refused_before_round_0(tmp_path, synth):
    from tests_helpers import cpt

    (tmp_path / "afile").write_text("x")
    for uri, says in ((str(tmp_path / "afile" / "ckpt"), "cannot write there"),
                      ("s3://bucket/x?endpoint_override=127.0.0.1:1&scheme=http", "cannot write there")):
        spec = tmp_path / "run.yaml"
        spec.write_text(yaml.safe_dump(tiny_spec(synth, checkpoints={"uri": uri})))
        # an unreachable S3 endpoint costs pyarrow's retries (~12 s): asked once, by submit
        for cmd in (("validate", str(spec)), ("submit", str(spec)))[0 if uri.startswith("/") else 1:]:
            out = cpt(tmp_path / "home", *cmd, timeout=120)
            assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
    from store.runs import RunStore

    store = RunStore(f"sqlite:///{tmp_path / 'home' / 'store.db'}")
    assert store.list_runs() == []  # submit refused before recording a run
