"""Lightning Fabric on a Ray Train rank: strategy (DDP/FSDP), precision and device from the run's resources."""

from __future__ import annotations

from typing import Any

from workers.config import OptimizerConfig


def make_fabric(resources: dict[str, Any]):
    """A launched Fabric for this rank. Ray Train already created the process group; Fabric reads
    ranks and world size from Ray's context (RayLightningEnvironment) and reuses that group."""
    import logging

    import ray.train
    import torch
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy
    from ray.train.lightning import RayLightningEnvironment

    for name in ("lightning.fabric", "lightning.pytorch", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    local = ctx.get_local_world_size()
    gpu = resources.get("gpus_per_worker", 0) > 0 and torch.cuda.is_available()
    env = RayLightningEnvironment()
    if resources.get("strategy") == "fsdp":
        strategy = FSDPStrategy(cluster_environment=env, state_dict_type="full")
    elif ctx.get_world_size() == 1:
        # one rank has nothing to synchronise: DDP would still copy every gradient into its buckets
        # and all-reduce them with itself at every step
        strategy = SingleDeviceStrategy(device=torch.device("cuda", 0) if gpu else torch.device("cpu"))
    else:
        strategy = DDPStrategy(cluster_environment=env)
    fabric = Fabric(accelerator="cuda" if gpu else "cpu", devices=local, num_nodes=ctx.get_world_size() // local,
                    strategy=strategy, precision=resources.get("precision", "32-true"))
    fabric.launch()
    return fabric


def prepare_model(raw, resources: dict[str, Any]):
    """Per-model GPU-path options before wrapping: activation checkpointing, torch.compile."""
    if resources.get("activation_checkpointing"):
        # transformers' own per-layer checkpointing: any family, any strategy
        raw.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if resources.get("compile"):
        raw.compile()  # in place: parameter names (and so checkpoints) stay the same
    return raw


def make_optimizer(model, opt: OptimizerConfig | dict[str, Any]):
    """AdamW with weight decay on matrices only (embeddings and norms' vectors excluded by rank)."""
    import torch

    opt = OptimizerConfig.model_validate(opt)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": opt.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=0.0, betas=tuple(opt.betas), eps=opt.eps)
