"""A rank imports Lightning Fabric without what a Fabric loop never uses (lightning.pytorch, torchmetrics)."""

import subprocess
import sys
from pathlib import Path

import pytest

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
from workers.fabric import _block_policy, mark_units
from workers.model import build_model, token_losses
from workers.runner import eval_forward

tied = sys.argv[2] == "tied"

def wrapped():
    m = build_model({"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
                     "tie_embeddings": tied}, 128, 16, 0)
    mark_units(m)
    return FSDP(m, auto_wrap_policy=_block_policy(), device_id=torch.device("cpu"), use_orig_params=True)

ids = torch.randint(0, 128, (2, 17))
f = wrapped()
# one FSDP unit per block under the root; untied, the input embedding and the output layer too
assert sum(isinstance(x, FSDP) for x in f.modules()) == (3 if tied else 5)
assert isinstance(f.module.get_output_embeddings(), FSDP) is not tied
for fsdp in (True, False):  # False: what evaluation did before, through the inner module
    f = wrapped()
    module, losses_of = eval_forward(f, fsdp)
    with torch.no_grad():
        got = losses_of(module, ids, 4 * 128 * 2 * 3)  # a round's first evaluation comes before its first step
        if fsdp:  # the sliced loss (3 positions at a time) is the plain forward's
            assert torch.allclose(got, token_losses(f, ids), rtol=1e-5), (got, token_losses(f, ids))
            head = f.module.get_output_embeddings()
            head = getattr(head, "_fsdp_wrapped_module", head)
            assert type(head).forward is head.forward.__func__  # the sliced loss was for that call only
    try:
        token_losses(f, ids).sum().backward()
        print(fsdp, "trains")
    except AssertionError as exc:
        print(fsdp, "broken:", exc)

# the units' shards go through a sharded checkpoint and back (model and AdamW, names unchanged)
import tempfile
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from workers import sharded
f, g = wrapped(), wrapped()
opt, opt_g = (torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (f, g))
token_losses(f, ids).sum().backward()
opt.step()
with tempfile.TemporaryDirectory() as tmp:
    sharded.write(tmp + "/c", sharded.state_of(f, opt), {}, rank=0)
    sharded.read(tmp + "/c", g, opt_g, with_optimizer=True)
full = StateDictOptions(full_state_dict=True)
a, b = get_model_state_dict(f, options=full), get_model_state_dict(g, options=full)
assert a.keys() == b.keys() and "lm_head.weight" in a and all(torch.equal(a[k], b[k]) for k in a)
print("checkpoint round trip")
"""


@pytest.mark.parametrize("tie", ["tied", "untied"])
def test_fsdp_evaluation_before_the_first_step_leaves_training_working(tie):
    """Under FSDP (one unit per block; untied embeddings a unit each) evaluation runs the wrapped
    root: a forward through the inner module first makes the blocks' units roots and the next
    training step fails (FSDP1 on CPU here; Lightning Fabric's FSDP is GPU-only, where it was found)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    r = subprocess.run([sys.executable, "-c", FSDP_EVAL, port, tie], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "True trains" in r.stdout, r.stdout
    assert "False broken" in r.stdout, r.stdout  # the test tells the two apart
    assert "checkpoint round trip" in r.stdout, r.stdout
