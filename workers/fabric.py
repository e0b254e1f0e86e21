"""Lightning Fabric on a Ray Train rank: strategy (DDP/FSDP), precision and device from the run's resources.

A rank imports Fabric from `lightning_fabric`, the package without the Trainer: `lightning.fabric`
(and Ray's `ray.train.lightning`) import all of `lightning.pytorch`, which a Fabric loop never uses.
Fabric's own import still reads torchmetrics' version by importing all of torchmetrics (scipy,
matplotlib: 0.5-1 s of every group start, on the way to the first step); `_import_fabric` hands it
the version without that import. Ranks and world size come from Ray Train's context (`RayEnvironment`).
"""

from __future__ import annotations

import sys

from store.configs import OptimizerConfig, Resources


def _import_fabric():
    """`lightning_fabric`, imported without the torchmetrics detour (see the module docstring).

    For the duration of the import `torchmetrics` is a module that carries only the installed
    version (what `compare_version` reads; it gates SpikeDetection, which cpt does not use). It is
    removed right after, so anything that imports torchmetrics later gets the real package."""
    import importlib.metadata
    import types

    if "lightning_fabric" in sys.modules or "torchmetrics" in sys.modules:
        return _fabric_module()
    stub = types.ModuleType("torchmetrics")
    try:
        stub.__version__ = importlib.metadata.version("torchmetrics")
    except importlib.metadata.PackageNotFoundError:  # not installed: Fabric's own check says False
        stub = None
    if stub is not None:
        sys.modules["torchmetrics"] = stub
    try:
        return _fabric_module()
    finally:
        if stub is not None and sys.modules.get("torchmetrics") is stub:
            del sys.modules["torchmetrics"]


def _fabric_module():
    try:
        import lightning_fabric  # shipped by pytorch-lightning, which `lightning` requires
    except ImportError:  # a lightning distribution without it: the umbrella package, Trainer and all
        sys.modules.pop("torchmetrics", None)
        import lightning.fabric as lightning_fabric
    return lightning_fabric


def _ray_environment(fabric_module):
    """Lightning's cluster environment, read from Ray Train's context (what Ray's
    RayLightningEnvironment does, without importing lightning.pytorch)."""
    import ray.train

    class RayEnvironment(fabric_module.plugins.environments.LightningEnvironment):
        def world_size(self) -> int:
            return ray.train.get_context().get_world_size()

        def global_rank(self) -> int:
            return ray.train.get_context().get_world_rank()

        def local_rank(self) -> int:
            return ray.train.get_context().get_local_rank()

        def node_rank(self) -> int:
            return ray.train.get_context().get_node_rank()

        def set_world_size(self, size: int) -> None:
            pass  # Ray Train's context is the truth

        def set_global_rank(self, rank: int) -> None:
            pass

        def teardown(self) -> None:
            pass  # Ray Train owns the process group

    return RayEnvironment()


def make_fabric(resources: Resources):
    """A launched Fabric for this rank. Ray Train already created the process group; Fabric reads
    ranks and world size from Ray's context and reuses that group."""
    import logging

    import ray.train
    import torch

    lf = _import_fabric()
    Fabric = lf.Fabric
    DDPStrategy, FSDPStrategy, SingleDeviceStrategy = (lf.strategies.DDPStrategy, lf.strategies.FSDPStrategy,
                                                       lf.strategies.SingleDeviceStrategy)

    for name in ("lightning_fabric", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    local = ctx.get_local_world_size()
    gpu = resources.uses_gpu and torch.cuda.is_available()
    env = _ray_environment(lf)
    if resources.strategy == "fsdp":
        strategy = FSDPStrategy(cluster_environment=env, state_dict_type="full", auto_wrap_policy=_block_policy())
    elif ctx.get_world_size() == 1:
        # one rank has nothing to synchronise: DDP would still copy every gradient into its buckets
        # and all-reduce them with itself at every step
        strategy = SingleDeviceStrategy(device=torch.device("cuda", 0) if gpu else torch.device("cpu"))
    else:
        strategy = DDPStrategy(cluster_environment=env)
    fabric = Fabric(accelerator="cuda" if gpu else "cpu", devices=local, num_nodes=ctx.get_world_size() // local,
                    strategy=strategy, precision=resources.precision)
    fabric.launch()
    return fabric


UNIT = "_cpt_fsdp_unit"
"""The attribute `mark_units` sets on the modules (besides blocks) that get an FSDP unit of their own."""


def _block_policy():
    """FSDP's units: each transformer block, so a rank holds one unsharded block at a time rather
    than the whole model (one unit would gather every parameter for the forward), and the modules
    `mark_units` marks. Every Hugging Face decoder layer class derives from
    GradientCheckpointingLayer: any family, any checkpoint."""
    from functools import partial

    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy
    from transformers.modeling_layers import GradientCheckpointingLayer

    return partial(lambda_auto_wrap_policy,
                   lambda_fn=lambda m: isinstance(m, GradientCheckpointingLayer) or getattr(m, UNIT, False))


def mark_units(raw) -> None:
    """Untied input and output embeddings each become an FSDP unit of their own. Left in the root
    unit they are built, gathered and held together, for the whole forward and backward: at 70B
    (vocabulary 128k x 8192, untied) that is 2.1B parameters, 2.4 blocks' worth. Tied, they are one
    parameter, which FSDP keeps in one unit: the root's."""
    inp, out = raw.get_input_embeddings(), raw.get_output_embeddings()
    if inp is None or out is None or inp.weight is out.weight:
        return
    for m in (inp, out):
        setattr(m, UNIT, True)


def prepare_model(raw, resources: Resources):
    """Per-model options before wrapping: FSDP's units, activation checkpointing, torch.compile."""
    if resources.strategy == "fsdp":
        mark_units(raw)
    if resources.activation_checkpointing:
        # transformers' own per-layer checkpointing: any family, any strategy
        raw.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if resources.compile:
        raw.compile()  # in place: parameter names (and so checkpoints) stay the same
    return raw


def make_optimizer(model, opt: OptimizerConfig):
    """AdamW with weight decay on matrices only (embeddings and norms' vectors excluded by rank);
    the LR is set per step."""
    import torch

    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    # on GPUs the fused kernel: one launch for all parameters instead of a few per tensor group
    fused = all(p.is_cuda for p in decay + no_decay) or None
    return torch.optim.AdamW([{"params": decay, "weight_decay": opt.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=0.0, betas=tuple(opt.betas), eps=opt.eps, fused=fused)
