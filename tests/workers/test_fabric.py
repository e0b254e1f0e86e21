"""A rank imports Lightning Fabric without what a Fabric loop never uses (lightning.pytorch, torchmetrics)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = """
import sys
from workers.fabric import _import_fabric
lf = _import_fabric()
assert lf.__name__ == "lightning_fabric", lf.__name__
loaded = set(sys.modules)
assert "torchmetrics" not in loaded, "torchmetrics imported"
assert not any(m.split(".")[0] in ("scipy", "matplotlib") for m in loaded), "scipy/matplotlib imported"
assert not any(m.startswith(("lightning.pytorch", "pytorch_lightning")) for m in loaded), "the Trainer imported"
from lightning_fabric.utilities.imports import _TORCHMETRICS_GREATER_EQUAL_1_0_0
assert _TORCHMETRICS_GREATER_EQUAL_1_0_0 is True  # Fabric saw the installed version
import torchmetrics
assert hasattr(torchmetrics, "Metric")  # a later import gets the real package
assert _import_fabric() is lf
"""


def test_fabric_import_skips_torchmetrics_and_the_trainer():
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
