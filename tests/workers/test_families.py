"""Model families built from scratch: each registered family builds the transformers model it names,
with cpt's sizes, tied or not, and trains; the spec refuses what a family cannot build."""

import pytest
import torch
import yaml

from store.configs import ModelConfig
from store.errors import SpecError
from workers.families import FAMILIES
from workers.model import build_model, model_signature, token_losses

EXPECTED = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt_neox": "GPTNeoXForCausalLM",
            "gpt2": "GPT2LMHeadModel"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_builds_its_model_with_the_given_sizes_and_learns(family):
    cfg = ModelConfig(family=family, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                      tie_embeddings=False)
    model = build_model(cfg, vocab_size=97, seq_len=16, seed=0)
    assert type(model).__name__ == EXPECTED[family] and model.config.model_type == family
    assert model.get_input_embeddings().weight.shape == (97, 32)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight  # untied
    assert model.config.num_hidden_layers == 2 and model.config.num_attention_heads == 4
    again = build_model(cfg, vocab_size=97, seq_len=16, seed=0)  # a seeded init: every rank builds the same
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))
    ids = torch.randint(0, 97, (4, 17), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = token_losses(model, ids).mean()
    for _ in range(5):
        opt.zero_grad()
        token_losses(model, ids).mean().backward()
        opt.step()
    assert token_losses(model, ids).mean() < first - 0.1


def test_families_have_distinct_signatures_and_tying_shares_the_embedding():
    sigs = set()
    for family in FAMILIES:
        model = build_model(ModelConfig(family=family, hidden_size=32, num_layers=1, num_heads=2,
                                        intermediate_size=64), 50, 8, 0)
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        sigs.add(model_signature(model))
    assert len(sigs) == len(FAMILIES)


@pytest.mark.parametrize("model,match", [
    ({"family": "mamba"}, r"model.family: unknown family 'mamba'; valid: gpt2, gpt_neox, llama, qwen2"),
    ({"family": "gpt2", "num_heads": 4, "num_kv_heads": 2}, r"model.num_kv_heads: family gpt2 has no grouped"),
])
def test_the_spec_refuses_a_family_that_cannot_build_the_model(synth, model, match):
    from conftest import tiny_spec
    from orchestrator.spec import parse_spec

    with pytest.raises(SpecError, match=match):
        parse_spec(yaml.safe_dump(tiny_spec(synth, model=model)))
