"""`pip install .` (a wheel, not an editable checkout) works: the migrations ship inside it."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests_helpers import ROOT

pytestmark = pytest.mark.e2e


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path, spec_file):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True)
    (wheel,) = wheels.glob("cpt-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies (torch, ray, ...) come from this environment's site-packages; cpt only from the wheel
    # (a path added by a .pth is not a site dir, so the checkout's editable-install hook stays inactive)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"}
    where = subprocess.run([str(py), "-c", "import store.db as d, cli; print(d.ALEMBIC_DIR, cli.__file__)"],
                           cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout
    assert where.count(site) == 2 and "cpt_migrations" in where and str(ROOT) not in where
    home = tmp_path / "home"
    up = subprocess.run([str(venv / "bin" / "cpt"), "--home", str(home), "db", "upgrade"], cwd=tmp_path, env=env,
                        capture_output=True, text=True)
    assert up.returncode == 0 and "at head" in up.stdout, up.stderr
    rev = subprocess.run([str(venv / "bin" / "cpt"), "--home", str(home), "db", "current"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    from store.db import head_revision

    assert rev.stdout.strip() == head_revision(), rev.stderr  # the wheel's migrations are the checkout's
    ok = subprocess.run([str(venv / "bin" / "cpt"), "--home", str(home), "validate", str(spec_file())],
                        cwd=tmp_path, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "ok:" in ok.stdout, ok.stderr
