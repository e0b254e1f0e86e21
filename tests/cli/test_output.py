"""Output: user text is printed as written (never as rich markup); -o paths that cannot be written
exit 2 and leave nothing; reports of runs without finished rounds say so."""

from tests_helpers import cpt


def test_user_text_is_never_parsed_as_markup(tmp_path):
    home = tmp_path / "home"
    for name in ("[b]x", "[red]", "[bold"):
        (home / "data" / name).mkdir(parents=True)
    out = cpt(home, "data", "list")
    assert out.returncode == 0, out.stderr
    for name in ("[b]x", "[red]", "[bold"):
        assert name in out.stdout
    missing = cpt(home, "data", "verify", str(home / "nowhere" / "[/red]"))  # a closing tag alone
    assert missing.returncode == 2 and "[/red]" in missing.stderr and "Traceback" not in missing.stderr


def test_terminal_escape_sequences_in_user_text_are_shown_not_run(tmp_path):
    home = tmp_path / "home"
    evil = "x\x1b]0;owned\x07\x1b[2J\rfake"  # retitle the terminal, clear it, rewrite the line
    (home / "data" / evil).mkdir(parents=True)
    listed = cpt(home, "data", "list")
    missing = cpt(home, "data", "verify", str(home / "nowhere" / evil))
    assert listed.returncode == 0 and missing.returncode == 2
    for text in (listed.stdout, missing.stderr):
        assert not any(c in text for c in "\x1b\x07\r") and "x\\x1b]0;owned\\x07\\x1b[2J\\x0dfake" in text, text


def test_unwritable_outputs_exit_2_and_leave_no_temp_file(tmp_path, spec_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = cpt(tmp_path / "home", "schedule", "plot", str(spec_file()), "--out", str(blocker / "lr.png"))
    assert out.returncode == 2 and "cannot write" in out.stderr and "Traceback" not in out.stderr
    folder = tmp_path / "dir.png"
    folder.mkdir()
    out = cpt(tmp_path / "home", "schedule", "plot", str(spec_file()), "--out", str(folder))
    assert out.returncode == 2 and "is a directory" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_report_and_compare_of_a_run_without_finished_rounds(tmp_path, synth):
    from conftest import recorded_run, tiny_spec

    home, _, run_id = recorded_run(tmp_path / "home", tiny_spec(synth))
    out = cpt(home.root, "report", run_id, "-o", str(tmp_path / "r.html"))
    assert out.returncode == 2 and "has no finished round yet" in out.stderr
    assert not (tmp_path / "r.html").exists()
    cmp = cpt(home.root, "compare", run_id, "--json")
    assert cmp.returncode == 0 and '"average": null' in cmp.stdout
    human = cpt(home.root, "compare", run_id)
    assert "has no finished round yet" in human.stderr and "0.0000" not in human.stdout
