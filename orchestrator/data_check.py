"""Checks of a run spec against what is on disk: tokenizer, domain shards, epochs, HF checkpoint.

Separate from the spec's own validation (orchestrator.spec), which needs nothing but the YAML:
these open files (DataError naming the file) and, where a stage limits epochs, size its draw.
"""

from __future__ import annotations

from typing import Any

from orchestrator.spec import RunSpec
from store.errors import DataError, SpecError


def check_data(spec: RunSpec) -> dict[str, dict[str, Any]]:
    """Check tokenizer, domain manifests and shards against the spec, and that `checkpoints.uri`
    can be written; returns manifests by domain. `validate`, `submit` and `resume` all ask it."""
    from corpus.shards import DomainData
    from corpus.tokenizer import load_tokenizer, tokenizer_hash

    tok_hash = tokenizer_hash(spec.tokenizer)
    tok_vocab = load_tokenizer(spec.tokenizer).get_vocab_size()
    manifests, sources = {}, {}
    for name, folder in spec.domains.items():
        data = DomainData.open(name, folder, tokenizer_hash=tok_hash)
        if data.tokens("train") < spec.seq_len + 1 or data.tokens("val") < spec.seq_len + 1:
            raise DataError(f"{folder}: domain {name!r} has fewer tokens than seq_len + 1 in a split "
                            f"(train {data.tokens('train')}, val {data.tokens('val')})")
        if data.manifest["vocab_size"] != tok_vocab:
            raise DataError(f"{folder}: manifest says vocab_size {data.manifest['vocab_size']}, the run's "
                            f"tokenizer {spec.tokenizer} has {tok_vocab}")
        manifests[name] = data.manifest
        sources[name] = data
    _check_epochs(spec, sources)
    if spec.evals:
        _check_eval_packages()
    if spec.checkpoints.uri:  # unreachable or read-only storage is found now, not after the first round trained
        from corpus import fs

        fs.probe_writable(spec.checkpoints.uri)
    if spec.model.path:
        from workers.model import check_hf_checkpoint

        vocab = next(iter(manifests.values()))["vocab_size"]
        check_hf_checkpoint(spec.model.path, vocab_size=vocab, tokenizer_hash=tok_hash)
    return manifests


def _check_eval_packages() -> None:
    """`evals:` needs lm-evaluation-harness (and accelerate, which its HF model imports) here and on
    the nodes; here is checked now, not after the first round trained."""
    from importlib.util import find_spec

    needed = (("lm-eval", "lm_eval"), ("accelerate", "accelerate"))
    missing = [name for name, module in needed if find_spec(module) is None]
    if missing:
        raise SpecError(f"evals: needs {' and '.join(missing)} (pip install 'cpt[eval]')")


KNOWN_UPFRONT = ("static", "fixed_replay")  # mixers whose weights do not depend on training feedback


def _check_epochs(spec: RunSpec, data: dict[str, Any]) -> None:
    """max_epochs that a stage must exceed whatever happens before it: a SpecError now, not hours later.

    Only stages whose weights are known before training (the mixers in KNOWN_UPFRONT) are checked;
    the stage's own draw is a lower bound on what the run has read of a domain by its end."""
    for i, st in enumerate(spec.stages):
        if not st.max_epochs or st.mixer.kind not in KNOWN_UPFRONT:
            continue
        import numpy as np

        from corpus.order import batch_counts
        from corpus.sampler import SequenceSource  # imports torch (~1 s): only where a limit is set
        from mixers.base import Observation, build_mixer

        obs = Observation(stage_index=i, round_index=0, num_rounds=st.rounds, stage_domains=list(st.domains),
                          replay_domains=spec.replay_domains(i), replay_fraction=st.replay.fraction,
                          domain_tokens={}, history=[], start_losses={}, reference_losses={}, seed=spec.seed)
        weights = build_mixer(st.mixer, where=f"stages.{i}.mixer").propose(obs)
        names = sorted(d for d, w in weights.items() if w > 0)
        need = sum(batch_counts(weights, names, spec.batch_size, n).sum(0) for _, n in spec.round_bounds(i))
        for d, cap in st.max_epochs.items():
            if d not in names or d not in data:  # a replay buffer's size is known only once it is filled
                continue
            n = SequenceSource(data[d], spec.seq_len).n
            epochs = int(np.ceil(need[names.index(d)] / max(n, 1)))
            if epochs > cap:
                raise SpecError(f"stages.{i}.max_epochs.{d}: the stage reads {int(need[names.index(d)]):,} "
                                f"sequences of {d!r}, which holds {n:,} ({epochs} epochs); the limit is {cap}. "
                                f"Lower the stage's tokens or the domain's weight, or raise max_epochs")
