"""A typo is not a crash: every usage error prints usage and one message, exit 2, no traceback."""

import sys

import pytest
import typer

from cli.main import app, main


def _leaves(cmd, path=()):
    subs = getattr(cmd, "commands", None)
    if subs:
        for name, sub in subs.items():
            yield from _leaves(sub, (*path, name))
    else:
        yield path, cmd


COMMANDS = list(_leaves(typer.main.get_command(app)))


def _run(monkeypatch, capsys, argv):
    monkeypatch.setattr(sys, "argv", ["cpt", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out + out.err


def test_every_command_is_covered():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"submit", "runs list", "runs show", "data prepare", "agent train", "db upgrade"} <= names
    assert len(names) >= 20


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=[" ".join(p) for p, _ in COMMANDS])
def test_unknown_option_exits_2_without_traceback(path, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CPT_HOME", str(tmp_path))
    code, text = _run(monkeypatch, capsys, [*path, "--no-such-flag", "x"])
    assert code == 2 and "No such option: --no-such-flag" in text and "Traceback" not in text
    assert "Usage: cpt " + " ".join(path) in text


def _numeric(opt) -> bool:
    # typer >= 0.2x describes a parameter's Python type; older typer (on click) has click's type
    desc = getattr(opt, "type_descriptor", None)
    if desc is not None:
        return desc.annotation in (int, float)
    return getattr(getattr(opt, "type", None), "name", "") in ("integer", "float")


TYPED = [(p, o) for p, cmd in COMMANDS for o in cmd.params
         if getattr(o, "opts", None) and o.opts[0].startswith("--") and _numeric(o)]


@pytest.mark.parametrize("path,opt", TYPED, ids=[f"{' '.join(p)} {o.opts[0]}" for p, o in TYPED])
def test_wrong_typed_value_exits_2_without_traceback(path, opt, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CPT_HOME", str(tmp_path))
    code, text = _run(monkeypatch, capsys, [*path, opt.opts[0], "abc"])
    assert code == 2 and "Invalid value" in text and "Traceback" not in text


def test_typed_options_exist():
    assert any(o.opts[0] == "--limit" for _, o in TYPED)


def test_unknown_command_and_missing_argument_exit_2(monkeypatch, capsys):
    code, text = _run(monkeypatch, capsys, ["nosuch"])
    assert code == 2 and "No such command 'nosuch'" in text and "Traceback" not in text
    code, text = _run(monkeypatch, capsys, ["submit"])
    assert code == 2 and "Missing argument" in text and "Traceback" not in text
