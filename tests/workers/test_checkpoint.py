import os

import pytest
import torch

from store.errors import CheckpointError
from workers.checkpoint import full_state, read_checkpoint, restore_state, save_state
from workers.model import build_model, model_signature

MODEL = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}


def _trained(seed=0):
    m = build_model(MODEL, 320, 16, seed)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    ids = torch.randint(0, 320, (2, 17), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        m(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss.backward()
        opt.step()
        opt.zero_grad()
    return m, opt


def save_checkpoint(folder, model, opt, meta):
    """What a rank does at a round's end (RoundRunner.save): the full state, written atomically."""
    model_sd, tensors, steps = full_state(model, opt)
    return save_state(folder, model_sd, tensors, steps, meta, model.config.tie_word_embeddings)


def test_roundtrip_model_and_optimizer(tmp_path):
    """The path production takes: RoundRunner.save writes, RoundRunner._restore reads into a model
    and optimizer that already exist (another seed's weights, an empty optimizer)."""
    m, opt = _trained()
    save_checkpoint(tmp_path / "c", m, opt, {"model_signature": model_signature(m)})
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no temp folder left behind
    m2 = build_model(MODEL, 320, 16, seed=123)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    weights, opt_state = read_checkpoint(tmp_path / "c", model_signature(m2), with_optimizer=True)
    restore_state(m2, opt2, weights, opt_state, tied=True)
    for (n, p), p2 in zip(m.named_parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, p2), n
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[p2]["exp_avg_sq"])
        assert float(opt.state[p]["step"]) == float(opt2.state[p2]["step"])
    assert m2.lm_head.weight.data_ptr() == m2.model.embed_tokens.weight.data_ptr()  # still tied


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch as st

    m, opt = _trained()
    save_checkpoint(tmp_path / "c", m, opt, {"v": 1})
    before = (tmp_path / "c" / "model.safetensors").read_bytes()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path / "c", m, opt, {"v": 2})
    assert sorted(os.listdir(tmp_path)) == ["c"]
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == before


def test_refuses_other_model_config_and_incomplete_folders(tmp_path):
    m, opt = _trained()
    save_checkpoint(tmp_path / "c", m, opt, {"model_signature": model_signature(m)})
    bigger = build_model({**MODEL, "hidden_size": 64}, 320, 16, 0)
    with pytest.raises(CheckpointError, match="different model config"):
        read_checkpoint(tmp_path / "c", model_signature(bigger), with_optimizer=True)
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        read_checkpoint(tmp_path / "half", None, with_optimizer=False)
