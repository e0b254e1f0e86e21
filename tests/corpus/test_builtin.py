import dataclasses

import pytest

from corpus import builtin
from store.errors import DataError


def test_fortunes_split_into_documents(tmp_path):
    (tmp_path / "jokes").write_text("First fortune, long enough to keep.\n%\nshort\n%\nSecond one, also long enough.\n")
    (tmp_path / "jokes.dat").write_bytes(b"\x00binary index")
    (tmp_path / "jokes.u8").symlink_to(tmp_path / "jokes")
    docs = list(builtin._fortunes(tmp_path))
    assert docs == ["First fortune, long enough to keep.\n", "Second one, also long enough.\n"]


def test_strip_roff_keeps_text_drops_markup():
    roff = ".TH LS 1\n.SH BESCHREIBUNG\nListet \\fBDateien\\fP auf\\-und ab.\n.TP\n\\fB\\-a\\fP, \\fB\\-\\-all\\fP\n"
    text = builtin.strip_roff(roff)
    assert "BESCHREIBUNG" in text and "Listet Dateien auf-und ab." in text and "-a, --all" in text
    assert ".TH" not in text and "\\f" not in text


def test_capped_stops_after_budget():
    assert list(builtin.capped(iter(["aaaa", "bbbb", "cccc"]), 6)) == ["aaaa", "bbbb"]


def test_missing_packages_named_without_install(tmp_path, monkeypatch):
    fake = dataclasses.replace(builtin.BUILTINS["prose-de"], probe=tmp_path / "absent")
    monkeypatch.setitem(builtin.BUILTINS, "prose-de", fake)
    with pytest.raises(DataError, match="apt-get install fortunes-de"):
        builtin.prepare_builtins(tmp_path / "data", tmp_path / "tok.json", ["prose-de"], install=False)
    assert not (tmp_path / "data").exists() and not (tmp_path / "tok.json").exists()
    with pytest.raises(DataError, match="unknown built-in domain"):
        builtin.prepare_builtins(tmp_path / "data", tmp_path / "tok.json", ["klingon"])


def test_stdlib_code_domain_is_always_available():
    doc = next(builtin.BUILTINS["code-py"].docs())
    assert builtin.BUILTINS["code-py"].package is None and ("def " in doc or "import " in doc)


def test_the_any_os_demo_needs_no_package():
    """`cpt demo --no-install` without the Debian text packages falls back to examples/demo-anyos.yaml,
    whose domains ship with Python itself: nothing to install on any OS."""
    from pathlib import Path

    import yaml

    from corpus.builtin import BUILTINS, missing_packages

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "demo-anyos.yaml").read_text())
    names = list(spec["domains"])
    assert names and all(BUILTINS[n].package is None for n in names) and missing_packages(names) == []
    docs = list(BUILTINS["docs-py"].docs())
    assert len(docs) > 200 and all(200 < len(d) < 20_000 for d in docs)
    assert sum("the" in d.split() for d in docs) > 0.9 * len(docs)  # English prose, not code
