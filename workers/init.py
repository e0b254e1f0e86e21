"""A model's structure without its memory, and a seeded initialisation that does not need the whole model.

At 8B-70B parameters no rank may hold the whole model, not even while it is built. A model is
therefore built with its parameters on the meta device (`empty`: structure and buffers only,
no parameter memory) and materialised where it will live: the whole model at once on one
device (`materialize`), or, under FSDP, unit by unit (one transformer block at a time) just
before FSDP shards the unit (`fsdp_param_init`, FSDP's `param_init_fn`).

Both use one rule, so a run starts from the same weights whatever its strategy or world size:
each module is initialised by the Hugging Face model's own `_init_weights` (the family's rules:
normal(0, initializer_range) matrices, unit norms, rotary buffers, GPT-2's scaled projections)
under an RNG seeded by (run seed, the module's qualified name), children before parents as
`from_pretrained`/`from_config` do. Nothing depends on the order units are visited in.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def _meta_parameters() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device; buffers stay real (they are small
    and some, like rotary frequencies, are computed in the constructor)."""
    register = nn.Module.register_parameter

    def to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        p = module._parameters.get(name)
        if p is not None and p.device.type != "meta":
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = to_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def empty(config: Any) -> nn.Module:
    """The causal LM of a transformers config with every parameter on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with _meta_parameters():
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


class Initializer:
    """Materialises and initialises the meta parameters under a module (not crossing modules
    already sharded by FSDP: they hold no meta parameters)."""

    def __init__(self, root: nn.Module, seed: int, device: torch.device | str = "cpu", weights: str | None = None):
        self.root, self.seed, self.device = root, seed, torch.device(device)
        self.weights = Safetensors(weights) if weights else None
        self.names = {id(m): n for n, m in root.named_modules(remove_duplicate=False)}

    def __call__(self, module: nn.Module) -> None:
        subtree = [m for m in _post_order(module) if any(p.is_meta for p in m.parameters(recurse=False))]
        if not subtree:
            return  # done as part of a parent (FSDP calls this for every module of a unit, parents first)
        # a parameter shared by two modules (tied embeddings) is made once; FSDP keeps shared
        # parameters in one unit, so the map lives for one call (holding more would keep every
        # unit's unsharded copy alive)
        made: dict[int, tuple[nn.Parameter, nn.Parameter, list[str]]] = {}
        for m in subtree:
            for name, p in list(m._parameters.items()):
                if p is not None and p.is_meta:
                    if id(p) not in made:
                        made[id(p)] = (p, nn.Parameter(torch.empty_like(p, device=self.device),
                                                       requires_grad=p.requires_grad), [])
                    made[id(p)][2].append(f"{self.names[id(m)]}.{name}".lstrip("."))
                    m._parameters[name] = made[id(p)][1]
        if self.weights is not None:  # the unit's tensors from the checkpoint, nothing else of it
            with torch.no_grad():
                for _, real, fqns in made.values():
                    real.copy_(self.weights.get(fqns))
            return
        gpu = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.no_grad():
            for m in _post_order(module):
                if m in subtree or not any(True for _ in m.parameters(recurse=False)):
                    with torch.random.fork_rng(devices=gpu):
                        torch.manual_seed(_seed(self.seed, self.names.get(id(m), type(m).__name__)))
                        self.root._init_weights(m)


def _post_order(module: nn.Module) -> list[nn.Module]:
    """Children before parents (what transformers' initialisation does), stopping at FSDP units."""
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if type(child).__name__ != "FullyShardedDataParallel":
                visit(child)
        out.append(m)

    visit(module)
    return out


def materialize(model: nn.Module, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """The whole model's parameters made real on `device` and initialised (see the module docstring)."""
    Initializer(model, seed, device)(model)
    return model


def fsdp_param_init(model: nn.Module, seed: int, device: torch.device | str,
                    weights: str | None = None) -> Callable[[nn.Module], None]:
    """FSDP's `param_init_fn` for an `empty` model: each unit materialised on `device` just before
    FSDP shards it, initialised as `materialize` would, or filled from a Hugging Face safetensors
    folder (`weights`): a rank reads the checkpoint one unit at a time and never holds all of it."""
    return Initializer(model, seed, device, weights)


class Safetensors:
    """Tensors of a Hugging Face safetensors folder by name (one file, or shards with an index),
    read one at a time through the files' memory maps."""

    def __init__(self, folder: str):
        import json
        from pathlib import Path

        from store.errors import CheckpointError

        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        try:
            if index.is_file():
                self.where = dict(json.loads(index.read_text())["weight_map"])
            else:
                from safetensors import safe_open

                files = sorted(self.folder.glob("*.safetensors"))
                self.where = {}
                for f in files:
                    with safe_open(str(f), framework="pt") as st:
                        self.where.update(dict.fromkeys(st.keys(), f.name))
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{folder}: cannot read the safetensors index ({exc})") from None
        self.open: dict[str, Any] = {}

    def get(self, names: list[str]) -> torch.Tensor:
        """The tensor stored under the first of `names` the folder has (a tied parameter has two)."""
        from safetensors import safe_open

        from store.errors import CheckpointError

        name = next((n for n in names if n in self.where), None)
        if name is None:
            raise CheckpointError(f"{self.folder}: no weights for {' / '.join(names)} in the checkpoint")
        file = self.where[name]
        if file not in self.open:
            self.open[file] = safe_open(str(self.folder / file), framework="pt")
        return self.open[file].get_tensor(name)
