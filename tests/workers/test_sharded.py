"""The sharded checkpoint format on its own (one process): what is on disk, that it is data and
not code, that a damaged one is a clear error, and how replicated tensors are split over ranks."""

import json
import os

import pytest
import torch

from store.configs import ModelConfig
from store.errors import CheckpointError
from workers import sharded
from workers.checkpoint import load_checkpoint, read_meta
from workers.model import build_model

MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def _trained(seed=0):
    model = build_model(MODEL, 300, 16, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids[:, :-1], labels=ids[:, 1:]).loss.backward()
    opt.step()
    return model, opt


def test_round_trip_of_model_and_optimizer_with_nothing_pickled(tmp_path):
    model, opt = _trained()
    sharded.write(str(tmp_path / "c"), sharded.state_of(model, opt), {"model_signature": "s"}, rank=0)
    assert sorted(os.listdir(tmp_path)) == ["c"]  # published by rename: no temp folder left
    assert sorted(os.listdir(tmp_path / "c")) == ["__0_0.distcp", "index.json", "meta.json"]  # no .metadata pickle
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert index["format"] == "cpt-dcp-index/1" and "model.model.embed_tokens.weight" in index["tensors"]
    assert read_meta(tmp_path / "c")["format"] == sharded.FORMAT and read_meta(tmp_path / "c")["world_size"] == 1
    raw = (tmp_path / "c" / "__0_0.distcp").read_bytes()
    assert not raw.startswith(b"\x80") and b"PK" not in raw[:4]  # raw tensor bytes, not pickle or torch.save zip
    other, other_opt = _trained(seed=5)
    sharded.read(str(tmp_path / "c"), other, other_opt, with_optimizer=True)
    for (n, p), q in zip(model.named_parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q), n
        assert torch.equal(opt.state[p]["exp_avg_sq"], other_opt.state[q]["exp_avg_sq"])
        assert float(opt.state[p]["step"]) == float(other_opt.state[q]["step"])
    weights_only = build_model(MODEL, 300, 16, 9)
    load_checkpoint(tmp_path / "c", weights_only)  # export's and model.path's way in
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), weights_only.parameters(), strict=True))


@pytest.mark.parametrize("damage,match", [
    (lambda c: (c / "__0_0.distcp").write_bytes((c / "__0_0.distcp").read_bytes()[:1000]), "truncated|cannot load"),
    (lambda c: (c / "index.json").write_text("{"), "corrupt checkpoint index"),
    (lambda c: (c / "index.json").write_text(json.dumps({**json.loads((c / "index.json").read_text()),
                                                         "format": "pickle"})), "index of format 'pickle'"),
    (lambda c: (c / "index.json").unlink(), "not a cpt sharded checkpoint|cannot load"),
])
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path, damage, match):
    model, opt = _trained()
    folder = tmp_path / "c"
    sharded.write(str(folder), sharded.state_of(model, opt), {}, rank=0)
    damage(folder)
    with pytest.raises(CheckpointError, match=match):
        sharded.read(str(folder), *_trained(seed=1), with_optimizer=True)


def test_ranks_split_replicated_tensors_by_bytes_and_cover_each_once():
    model, opt = _trained()
    state = sharded.state_of(model, opt)
    parts = [sharded.mine(state, r, 3) for r in range(3)]
    keys = [(part, k) for p in parts for part, ts in p.items() for k in ts]
    assert sorted(keys) == sorted((part, k) for part, ts in state.items() for k in ts)  # each exactly once
    sizes = [sum(v.numel() * v.element_size() for ts in p.values() for v in ts.values()) for p in parts]
    largest = max(v.numel() * v.element_size() for ts in state.values() for v in ts.values())
    assert max(sizes) - min(sizes) <= largest  # balanced within one tensor


def test_export_consolidates_a_sharded_checkpoint_into_sharded_safetensors(tmp_path, synth):
    """Above the shard size (5 GB in `cpt export`; 100 KB here) the export is several safetensors
    files with an index, which transformers loads as one model."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from workers.export import export_hf

    vocab = Tokenizer.from_file(str(synth["tokenizer"])).get_vocab_size()
    model = build_model(ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128), vocab, 16, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    meta = {"model_config": model.config.to_dict(), "tokenizer_hash": "h"}
    sharded.write(str(tmp_path / "c"), sharded.state_of(model, opt), meta, rank=0)
    out = export_hf(tmp_path / "c", tmp_path / "hf", synth["tokenizer"], max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    back = AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), back.parameters(), strict=True))
