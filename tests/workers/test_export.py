"""Hugging Face in and out: continue tiny local models of four families, export, reload with transformers."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import GROUPS, recorded_run, tiny_spec
from orchestrator.controller import Controller

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _config(family: str, vocab: int):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    small = {"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}
    return {
        "llama": lambda: LlamaConfig(**small, tie_word_embeddings=False),
        "qwen2": lambda: Qwen2Config(**small, num_key_value_heads=1, tie_word_embeddings=True),
        "gpt_neox": lambda: GPTNeoXConfig(**small),
        "gpt2": lambda: GPT2Config(vocab_size=vocab, n_embd=32, n_layer=1, n_head=2, n_positions=64),
    }[family]()


FAMILIES = ["llama", "qwen2", "gpt_neox", "gpt2"]


def test_continue_and_export_each_family(tmp_path, synth, ray_local):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corpus.sampler import ValBatches
    from corpus.shards import DomainData
    from workers.model import token_losses

    vocab = Tokenizer.from_file(str(synth["tokenizer"])).get_vocab_size()
    runs = {}
    for family in FAMILIES:  # one after the other on one worker group: its ranks rebuild for each model
        src = tmp_path / f"hf-{family}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(_config(family, vocab)).save_pretrained(src)
        spec = tiny_spec(synth, name=family.replace("_", "-"), model={"path": str(src)})
        spec["stages"] = spec["stages"][:1]
        runs[family] = recorded_run(tmp_path / family, spec)
        home, store, run_id = runs[family]
        assert Controller(store, home, run_id, tracking=False, groups=GROUPS).run() == "finished", family
    exports = {family: subprocess.Popen([sys.executable, "-m", "cli.main", "--home", str(runs[family][0].root),
                                         "export", runs[family][2], "--round", "0.1", "-o",
                                         str(tmp_path / f"export-{family}")],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
               for family in FAMILIES}  # side by side: each is mostly imports
    for family in FAMILIES:
        home, store, run_id = runs[family]
        out = tmp_path / f"export-{family}"
        _, err = exports[family].communicate(timeout=300)
        assert exports[family].returncode == 0, err[-2000:]
        model = AutoModelForCausalLM.from_pretrained(out)
        assert model.config.model_type == family
        tok = AutoTokenizer.from_pretrained(out)
        text = "continual pre-training, exported"
        assert tok(text)["input_ids"] == Tokenizer.from_file(str(synth["tokenizer"])).encode(text).ids
        # the exported model's loss on cpt's fixed validation batches is cpt's own eval of that checkpoint
        last = store.rounds(run_id, status="finished")[-1]
        data = DomainData.open("en", str(synth["domains"]["en"]))
        with torch.no_grad():
            losses = [token_losses(model.eval(), b).mean().item() for b in ValBatches(data, 32, 4, 2)]
        assert sum(losses) / len(losses) == pytest.approx(last.eval_losses["en"], rel=1e-5), family

    # bad requests change nothing: a non-empty output folder, a round that does not exist, a malformed one
    home, store, run_id = runs["llama"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")

    def cpt(*args):
        return subprocess.run([sys.executable, "-m", "cli.main", "--home", str(home.root), "export", run_id, *args],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)

    out = cpt("-o", str(tmp_path / "full"))
    assert out.returncode == 2 and "not empty" in out.stderr and (tmp_path / "full" / "keep.txt").exists()
    (tmp_path / "afile").write_text("y")
    out = cpt("-o", str(tmp_path / "afile"), "--overwrite")
    assert out.returncode == 2 and "not a folder" in out.stderr and (tmp_path / "afile").read_text() == "y"
    # --overwrite replaces an earlier export, never CPT_HOME, a folder above it or a folder cpt did not write
    for target, says in ((home.root, "refusing to replace"), (home.root.parent, "refusing to replace"),
                         (tmp_path / "full", "replaces only an export")):
        out = cpt("-o", str(target), "--overwrite")
        assert out.returncode == 2 and says in out.stderr, out.stderr
    assert (tmp_path / "full" / "keep.txt").exists() and (home.root / "store.db").exists()
    out = cpt("-o", str(tmp_path / "export-llama"), "--overwrite")
    assert out.returncode == 0, out.stderr
    out = cpt("--round", "7.0", "-o", str(tmp_path / "x"))
    assert out.returncode == 2 and "no finished round 7.0" in out.stderr and not (tmp_path / "x").exists()
    out = cpt("--round", "abc", "-o", str(tmp_path / "x"))
    assert out.returncode == 2 and "STAGE.ROUND" in out.stderr
