"""Names are a grammar and paths derived from them stay inside their roots (hypothesis over
arbitrary names; a sentinel tree next to CPT_HOME must never change)."""

import hashlib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_spec
from store.errors import CptError, InputError
from store.names import check_name, inside, is_name

NASTY = ["", ".", "..", "../x", "../../sentinel", "/abs", "a/b", "a\\b", "[/]", "[red]x", " x", "x ", "a\nb",
         "%41", "a?b", "a#b", "~", "-x", "é", "a" * 65, "replay/en", "..\\..\\x", "\x00"]
names = st.one_of(st.sampled_from(NASTY), st.text(max_size=20))


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_the_grammar():
    assert all(is_name(n) for n in ["en", "prose-de", "a.b_c-1", "A" * 64, "0"])
    assert not any(is_name(n) for n in NASTY)
    with pytest.raises(InputError, match=r"--domain '\.\./x' is not a valid name"):
        check_name("../x", "--domain")


def test_inside_refuses_escapes_and_symlinks(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "root", "ok") == (tmp_path / "root" / "ok").resolve()
    for parts in (("..",), ("../x",), ("link", "x"), ("/etc",), (".",)):
        with pytest.raises(InputError, match="outside"):
            inside(tmp_path / "root", *parts)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names)
def test_prepare_with_any_domain_name_stays_inside_cpt_home(tmp_path_factory, synth, name):
    from cli.main import app

    base = tmp_path_factory.mktemp("names")
    sentinel = base / "sentinel"
    (sentinel / "data" / "en").mkdir(parents=True)
    (sentinel / "data" / "en" / "manifest.json").write_text("{}")
    before = _tree_hash(sentinel)
    home = base / "home"
    args = ["--home", str(home), "data", "prepare", str(synth["raw"]["en"]), "-d", name, "--tokenizer",
            str(synth["tokenizer"]), "--val-fraction", "0.2", "--overwrite"]
    try:
        app(args, standalone_mode=False, prog_name="cpt")
        ok = True
    except CptError as exc:
        assert exc.exit_code == 2
        ok = False
    assert ok == is_name(name)
    assert _tree_hash(sentinel) == before
    assert sorted(p.name for p in base.iterdir()) == sorted(["sentinel", *(["home"] if home.exists() else [])])
    if ok:
        assert (home / "data" / name / "manifest.json").is_file()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(domain=names, stage=names, experiment=names, run=names)
def test_spec_names_follow_the_grammar(synth, domain, stage, experiment, run):
    from orchestrator.spec import parse_spec

    spec = tiny_spec(synth, name=run, tracking={"experiment": experiment})
    spec["domains"][domain] = spec["domains"]["en"]
    spec["stages"][0]["name"] = stage
    spec["stages"][0]["domains"] = [domain]
    try:
        parse_spec(yaml.safe_dump(spec))
        accepted = True
    except CptError as exc:
        assert exc.exit_code == 2
        accepted = False
    assert accepted == all(is_name(n) for n in (domain, stage, experiment, run)) or stage == "s2"
