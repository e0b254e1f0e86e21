"""Evaluation at a real vocabulary: the loss is computed a slice of positions at a time, so memory
is bounded by the slice, not by batch x sequence x vocabulary."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from store.configs import ModelConfig
from workers.families import FAMILIES
from workers.model import build_model, eval_losses, token_losses

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sliced_evaluation_equals_the_full_forward(family):
    model = build_model(ModelConfig(family=family, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                        500, 64, 0).eval()
    ids = torch.randint(0, 500, (3, 65), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = token_losses(model, ids)
        sliced = eval_losses(model, ids, logit_bytes=4 * 500 * 3 * 7)  # 7 positions per slice
    assert sliced.shape == (3,) and torch.allclose(sliced, full, rtol=1e-5, atol=1e-6)


PROBE = """
import json, resource, sys, torch
sys.path.insert(0, {root!r})
from store.configs import ModelConfig
from workers.model import build_model, eval_losses
torch.set_num_threads(2)
mb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
model = build_model(ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), 131072, 1024, 0)
model.eval()
ids = torch.randint(0, 131072, (8, 1025), generator=torch.Generator().manual_seed(0))
built = mb()
with torch.no_grad():
    first = eval_losses(model, ids[:4])  # one micro-batch of 4 sequences
    one = mb()
    rest = eval_losses(model, ids[4:8])  # the rest of a batch of 8
print(json.dumps({{"built_mb": built, "one_mb": one, "all_mb": mb(),
                  "finite": bool(torch.isfinite(first).all() and torch.isfinite(rest).all())}}))
"""


def test_evaluation_memory_is_bounded_by_the_slice_not_the_vocabulary_or_the_batch():
    """Vocab 131,072 x seq 1,024: one micro-batch of 4 sequences would hold 2 GB of fp32 logits
    (a global batch of 64 in one forward, 34 GB); sliced, it takes a few hundred MB, and the next
    micro-batch of the same batch adds nothing."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT))], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["finite"], got
    assert got["one_mb"] - got["built_mb"] < 600, got  # vs 2,048 MB of logits alone unsliced
    assert got["all_mb"] - got["one_mb"] < 64, got  # the batch's other micro-batches: no growth
