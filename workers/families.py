"""Model families a run can build from scratch, by name (`model: {family: NAME, ...sizes}`).

Each family maps cpt's ModelConfig (hidden size, layers, heads, KV heads, MLP width, tied
embeddings) to a Hugging Face config; the model is `AutoModelForCausalLM.from_config` of it, so
checkpoints, export and `from_pretrained` work as for any transformers causal LM. A run that
continues a Hugging Face checkpoint (`model.path`) needs no entry here: its config.json decides.

Adding a family is one function in this file: `@register("name", gqa=...)` on a function
`(model, vocab_size, seq_len) -> transformers config`. The spec checks the name (and grouped-query
attention where the family has none) at validation; `cpt models` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from store.configs import ModelConfig
from store.errors import RegistryError


@dataclass(frozen=True)
class Family:
    name: str
    config: Callable[[ModelConfig, int, int], Any]
    """(model, vocab size, seq_len) -> the transformers config to build."""
    gqa: bool
    """Whether the family has grouped-query attention (num_kv_heads below num_heads)."""
    doc: str


FAMILIES: dict[str, Family] = {}


def register(name: str, gqa: bool):
    def add(fn: Callable[[ModelConfig, int, int], Any]) -> Callable[[ModelConfig, int, int], Any]:
        FAMILIES[name] = Family(name, fn, gqa, (fn.__doc__ or "").strip())
        return fn

    return add


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise RegistryError(f"model.family: unknown family {name!r}; valid: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def problem(model: ModelConfig) -> str | None:
    """Why a from-scratch model config cannot be built (for the spec's validation), or None."""
    if model.path:
        return None
    if model.family not in FAMILIES:
        return f"model.family: unknown family {model.family!r}; valid: {', '.join(sorted(FAMILIES))}"
    if not FAMILIES[model.family].gqa and model.num_kv_heads not in (None, model.num_heads):
        return (f"model.num_kv_heads: family {model.family} has no grouped-query attention; "
                f"leave num_kv_heads unset")
    return None


# dropout off and no special token ids: pre-training packs documents with EOS itself
_COMMON = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None, "attn_implementation": "sdpa"}


@register("llama", gqa=True)
def _llama(m: ModelConfig, vocab: int, seq_len: int):
    """Llama: RMSNorm, SwiGLU MLP, rotary positions, grouped-query attention."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                       num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads or m.num_heads,
                       intermediate_size=m.intermediate_size, max_position_embeddings=seq_len,
                       tie_word_embeddings=m.tie_embeddings, attention_dropout=0.0, **_COMMON)


@register("qwen2", gqa=True)
def _qwen2(m: ModelConfig, vocab: int, seq_len: int):
    """Qwen2: Llama's layout with biases on the query/key/value projections."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                       num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads or m.num_heads,
                       intermediate_size=m.intermediate_size, max_position_embeddings=seq_len,
                       tie_word_embeddings=m.tie_embeddings, attention_dropout=0.0, use_sliding_window=False,
                       **_COMMON)


@register("gpt_neox", gqa=False)
def _gpt_neox(m: ModelConfig, vocab: int, seq_len: int):
    """GPT-NeoX (Pythia): LayerNorm, GELU MLP, parallel residual, partial rotary positions."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                         num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
                         max_position_embeddings=seq_len, tie_word_embeddings=m.tie_embeddings,
                         attention_dropout=0.0, hidden_dropout=0.0, **_COMMON)


@register("gpt2", gqa=False)
def _gpt2(m: ModelConfig, vocab: int, seq_len: int):
    """GPT-2: LayerNorm, GELU MLP, learned absolute positions."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab, n_embd=m.hidden_size, n_layer=m.num_layers, n_head=m.num_heads,
                      n_inner=m.intermediate_size, n_positions=seq_len, tie_word_embeddings=m.tie_embeddings,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **_COMMON)
