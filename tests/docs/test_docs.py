"""The documents a new user reads first stay true: commands exist, referenced files exist, sizes sane."""

import re
from pathlib import Path

import typer

from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BENCH = ROOT / "benchmarks" / "README.md"
# Raw outputs the benchmark README names but that cannot exist yet, each with the README's reason.
NOT_RUN_HERE: dict[str, str] = {}  # results a benchmark here cannot make (none since gpu.json came from a GPU)


def _blocks(text: str, lang: str = "bash") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _commands() -> dict[tuple[str, ...], object]:
    """Every command and group of the CLI by its path of names (the root is ())."""
    found: dict[tuple[str, ...], object] = {}

    def walk(cmd, path=()):
        found[path] = cmd
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app))
    return found


def test_documents_are_of_a_sane_size():
    # an editing accident once turned README.md into 270k lines; CI passed because nothing read it
    for doc, most in ((README, 600), (BENCH, 900), (ROOT / "docs" / "architecture.md", 900)):
        lines = doc.read_text().splitlines()
        assert 20 < len(lines) <= most, f"{doc.name}: {len(lines)} lines"
        assert max(map(len, lines)) <= 400, f"{doc.name}: a line of {max(map(len, lines))} characters"


def test_quickstart_targets_exist_in_the_makefile():
    quick = _blocks(README.read_text())[0]
    targets = re.findall(r"^make (\S+)", quick, flags=re.M)
    assert targets == ["demo", "test"], quick
    makefile = (ROOT / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"make {target}: no such target"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_cpt_command_in_the_readme_exists():
    known = _commands()
    seen = 0
    for block in _blocks(README.read_text()):
        for line in block.splitlines():
            code = line.split("#", 1)[0]
            # "cpt runs cancel RUN | cpt runs resume RUN" lists alternatives on one line
            for part in re.findall(r"\bcpt((?: +[a-z][a-z-]*)+)", code):
                words = tuple(part.split())
                # the longest prefix that is a command; what follows is arguments
                prefix = max((words[:i] for i in range(len(words) + 1) if words[:i] in known), key=len)
                assert prefix, f"README names `cpt {part.strip()}`: no such command"
                assert not getattr(known[prefix], "commands", None), f"`cpt {part.strip()}` is a group"
                seen += 1
    assert seen >= 20


def test_every_raw_result_the_benchmark_readme_names_is_committed():
    text = BENCH.read_text()
    named = set(re.findall(r"results/([A-Za-z0-9_.*-]+\.(?:json|png))", text))
    assert len(named) >= 8
    results = ROOT / "benchmarks" / "results"
    for name in sorted(named):
        if name in NOT_RUN_HERE:
            continue
        assert list(results.glob(name)), f"benchmarks/README.md names results/{name}: not committed"
    for script in set(re.findall(r"python (benchmarks/[a-z_]+\.py)", text)):
        assert (ROOT / script).is_file(), f"benchmarks/README.md runs {script}: no such script"
