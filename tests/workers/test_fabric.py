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


FSDP_EVAL = """
import os, sys
import torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from workers.fabric import _block_policy
from workers.model import build_model, token_losses
from workers.runner import eval_forward

def wrapped():
    m = build_model({"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}, 128, 16, 0)
    return FSDP(m, auto_wrap_policy=_block_policy(), device_id=torch.device("cpu"), use_orig_params=True)

ids = torch.randint(0, 128, (2, 17))
f = wrapped()
assert sum(isinstance(x, FSDP) for x in f.modules()) == 3, "one FSDP unit per block, under the root"
for fsdp in (True, False):  # False: what evaluation did before, through the inner module
    f = wrapped()
    module, losses_of = eval_forward(f, fsdp)
    with torch.no_grad():
        got = losses_of(module, ids, 4 * 128 * 2 * 3)  # a round's first evaluation comes before its first step
        if fsdp:  # the sliced loss (3 positions at a time) is the plain forward's
            assert torch.allclose(got, token_losses(f, ids), rtol=1e-5), (got, token_losses(f, ids))
            assert type(f.module.get_output_embeddings()).forward is f.module.get_output_embeddings().forward.__func__
    try:
        token_losses(f, ids).sum().backward()
        print(fsdp, "trains")
    except AssertionError as exc:
        print(fsdp, "broken:", exc)
"""


def test_fsdp_evaluation_before_the_first_step_leaves_training_working():
    """Under FSDP (one unit per block) evaluation runs the wrapped root: a forward through the inner
    module first makes the blocks' units roots and the next training step fails (FSDP1 on CPU here;
    Lightning Fabric's FSDP is GPU-only, where it was found)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    r = subprocess.run([sys.executable, "-c", FSDP_EVAL, port], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "True trains" in r.stdout, r.stdout
    assert "False broken" in r.stdout, r.stdout  # the test tells the two apart
