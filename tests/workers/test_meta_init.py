"""Nothing full-size on any rank while a model is built: parameters start on the meta device and
are materialised one FSDP unit at a time, with the weights a whole-model build gives; an HF
checkpoint is read shard by shard. FSDP1 on CPU (gloo, two processes) stands in for Fabric's
GPU-only FSDP, which calls the same `param_init_fn`."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from store.configs import ModelConfig
from workers.families import family
from workers.init import Initializer, empty, materialize

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt_neox", "gpt2"])
def test_unit_by_unit_init_is_the_whole_model_init(name):
    cfg = family(name).config(ModelConfig(family=name, hidden_size=64, num_layers=3, num_heads=4,
                                          intermediate_size=96), 300, 32)
    shell = empty(cfg)
    assert all(p.is_meta for p in shell.parameters())  # no parameter memory at all
    whole = materialize(empty(cfg), seed=3)
    units = empty(cfg)
    init = Initializer(units, seed=3)
    blocks = [m for m in units.modules() if type(m).__name__.endswith(("DecoderLayer", "Layer", "Block"))]
    for block in reversed(blocks):  # any order: FSDP visits blocks, then the root
        init(block)
    init(units)
    a, b = whole.state_dict(), units.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[next(iter(a))], materialize(empty(cfg), seed=4).state_dict()[next(iter(a))])
    assert whole.get_output_embeddings().weight is whole.get_input_embeddings().weight  # the tie survives
    ids = torch.randint(0, 300, (2, 16))
    assert 5.0 < whole(ids, labels=ids).loss.item() < 6.5  # ~ln(300): a sane init


FSDP_BUILD = """
import json, os, sys
import torch, torch.distributed as dist
rank, world, port, mode, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
shape = json.loads(sys.argv[6])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
dist.init_process_group("gloo", rank=rank, world_size=world)
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from workers.fabric import _block_policy, mark_units
from workers.init import fsdp_param_init
from workers.model import build_empty, build_model

import threading, time
def mb(key):
    return int(dict(l.split(":", 1) for l in open("/proc/self/status"))[key].split()[0]) / 1024

peak = [0.0]
def watch():  # anonymous memory (what the rank holds), not file pages a safetensors map brings in
    while True:
        peak[0] = max(peak[0], mb("RssAnon"))
        time.sleep(0.002)
threading.Thread(target=watch, daemon=True).start()
MODEL, VOCAB = shape["model"], shape["vocab"]
cpu = torch.device("cpu")
time.sleep(0.05)
before = mb("RssAnon")
if mode == "full":  # the whole model on every rank, then sharded (what cpt did)
    model = FSDP(build_model(MODEL, VOCAB, 64, 0), auto_wrap_policy=_block_policy(), device_id=cpu,
                 use_orig_params=True)
else:
    raw, weights = build_empty({"path": folder} if mode == "hf" else MODEL, VOCAB, 64)
    if shape["mark"]:
        mark_units(raw)
    model = FSDP(raw, auto_wrap_policy=_block_policy(), device_id=cpu, use_orig_params=True,
                 param_init_fn=fsdp_param_init(raw, 0, cpu, weights))
after = mb("RssAnon") - before
time.sleep(0.05)
grew = peak[0] - before
full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
if rank == 0:
    if mode == "hf":
        from safetensors.torch import load_file
        ref = load_file(os.path.join(folder, "model.safetensors"))
    else:
        ref = build_model(MODEL, VOCAB, 64, 0).state_dict()
    same = all(torch.equal(full[k], ref[k]) for k in ref)
    params = sum(v.numel() for k, v in full.items() if k != "lm_head.weight" or not MODEL.get("tie_embeddings", True))
    units = sum(isinstance(m, FSDP) for m in model.modules())
    print(json.dumps({"grew_mb": grew, "after_mb": after, "same": same, "params": params, "units": units}))
dist.destroy_process_group()
"""


BLOCKS = {"model": {"hidden_size": 1024, "num_layers": 8, "num_heads": 8, "intermediate_size": 2816},
          "vocab": 1024, "mark": True}
"""8 blocks of 50 MB, tied embeddings of 4 MB."""


def _world(mode: str, folder: Path, world: int = 2, shape: dict = BLOCKS) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    # every large allocation its own mapping, returned when freed: glibc's heap would keep what a
    # freed unit held and count it against the next (fragmentation, not what the code holds)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    procs = [subprocess.Popen([sys.executable, "-c", FSDP_BUILD, str(r), str(world), port, mode, str(folder),
                               json.dumps(shape)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for r in range(world)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return json.loads(outs[0][0].strip().splitlines()[-1])


def test_fsdp_builds_unit_by_unit_and_reads_an_hf_checkpoint_shard_by_shard(tmp_path):
    """A 100M-parameter model (400 MB in fp32, 8 blocks of 50 MB) on 2 ranks: building it whole on
    each rank, then sharding, holds the whole model on a rank; built unit by unit a rank holds its
    half plus about two blocks, and ends with the same weights. An HF folder of the same model is
    read unit by unit into the shards with the file's weights exactly. Anonymous memory is sampled
    (file pages a safetensors map brings in are the page cache's, shared by a node's ranks)."""
    from workers.model import build_model

    build_model({"hidden_size": 1024, "num_layers": 8, "num_heads": 8, "intermediate_size": 2816}, 1024, 64,
                seed=5).save_pretrained(tmp_path / "hf")
    full, meta, hf = (_world(m, tmp_path / "hf") for m in ("full", "meta", "hf"))
    size_mb, block_mb = 4 * meta["params"] / 2**20, 4 * 12.6e6 / 2**20
    assert meta["same"] and hf["same"] and full["same"]
    # all three end with the same shards (half the model, and FSDP's own buffers); on the way there
    # the old build held the other half too, the unit-by-unit build about two blocks (a unit and
    # its flattened copy)
    assert abs(meta["after_mb"] - full["after_mb"]) < 30 and abs(hf["after_mb"] - full["after_mb"]) < 30
    assert full["grew_mb"] - full["after_mb"] > 0.45 * size_mb, (full, size_mb)
    for built in (meta, hf):
        assert built["grew_mb"] - built["after_mb"] < 2.5 * block_mb, (built, block_mb)


def test_untied_embeddings_are_built_and_gathered_one_at_a_time(tmp_path):
    """Untied input and output embeddings (Llama 3 8B/70B, Qwen2 7B+) get an FSDP unit each
    (workers.fabric.mark_units): in the root unit both were materialised at once, and both held
    unsharded through every forward and backward. A vocabulary of 32,768 x 512 (64 MB a matrix)
    beside 2 blocks of 13 MB on 2 ranks: beyond its shards the build holds one matrix and its
    flattened copy (~128 MB), not both matrices and their copies (~256 MB), and ends with the same
    weights."""
    shape = {"model": {"hidden_size": 512, "num_layers": 2, "num_heads": 8, "intermediate_size": 1376,
                       "tie_embeddings": False}, "vocab": 32768}
    one, both = (_world("meta", tmp_path, shape={**shape, "mark": mark}) for mark in (True, False))
    matrix_mb = 4 * 32768 * 512 / 2**20
    assert one["same"] and both["same"] and (one["units"], both["units"]) == (5, 3)
    assert abs(one["after_mb"] - both["after_mb"]) < 20  # the same shards either way
    assert both["grew_mb"] - both["after_mb"] > 3.2 * matrix_mb, (both, matrix_mb)
    assert one["grew_mb"] - one["after_mb"] < 2.4 * matrix_mb, (one, matrix_mb)
