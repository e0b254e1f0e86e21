"""execute_round(RoundPlan) -> RoundResult: everything one round of training does.

load checkpoint -> Lightning fit for N steps on the weighted mixture, LR from the stage's
schedule at each step -> per-domain eval -> atomic checkpoint -> result.
"""

from __future__ import annotations

import os
import time
import warnings
from functools import partial

from store.datasets import DomainData
from store.errors import TrainingError
from store.records import RoundPlan, RoundResult
from workers.schedules import SCHEDULES, lr_at


def execute_round(plan: RoundPlan) -> RoundResult:
    import torch

    # Ray reuses worker processes and sets OMP_NUM_THREADS to the task's num_cpus.
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    t0 = time.perf_counter()
    import logging

    import lightning as L

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from workers.checkpoint import load_checkpoint, load_optimizer_state, save_checkpoint
    from workers.data import MixtureSampler, make_datamodule
    from workers.evaluate import evaluate
    from workers.model import build_model, model_signature
    from workers.module import CausalLMModule

    names = sorted(set(plan.weights) | set(plan.eval_domains))
    domains = {n: DomainData.open(n, plan.domain_paths[n], plan.tokenizer_hash) for n in names}
    use_gpu = torch.cuda.is_available() and bool(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    device = torch.device("cuda" if use_gpu else "cpu")

    model = build_model(plan.model, plan.vocab_size, plan.seq_len, plan.seed)
    signature = model_signature(model)
    init_opt = None
    if plan.init_checkpoint:
        load_checkpoint(plan.init_checkpoint, model, expect_signature=signature)
        if plan.load_optimizer:
            init_opt = partial(load_optimizer_state, plan.init_checkpoint, model)
    model.to(device).train()

    eval_before = None
    if plan.eval_before:
        eval_before = evaluate(model, domains, plan.eval_domains, plan.seq_len, plan.batch_size,
                               plan.eval_batches, device)

    spec = SCHEDULES[plan.schedule["kind"]](**plan.schedule)
    sampler = MixtureSampler(domains, plan.weights, plan.seq_len, plan.batch_size, plan.seed,
                             plan.stage_index, plan.round_index)
    module = CausalLMModule(model, partial(lr_at, spec, total=plan.stage_steps), plan.stage_step_start,
                            sampler.names, plan.optimizer, plan.progress_path, init_opt, plan.sample_loss)
    precision = "bf16-mixed" if use_gpu and plan.model.get("dtype") == "bfloat16" else "32-true"
    trainer = L.Trainer(
        max_steps=plan.num_steps, accelerator="gpu" if use_gpu else "cpu", devices=1, precision=precision,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, gradient_clip_val=plan.optimizer.get("grad_clip") or None,
        use_distributed_sampler=False, default_root_dir=os.path.dirname(os.path.dirname(plan.checkpoint_dir)))
    t_fit = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available but not used.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        trainer.fit(module, datamodule=make_datamodule(sampler, plan.stage_step_start, plan.num_steps))
    fit_s = time.perf_counter() - t_fit
    if len(module.losses) != plan.num_steps:
        raise TrainingError(f"round trained {len(module.losses)} steps, planned {plan.num_steps}")
    if not all(map(_finite, module.losses)):
        raise TrainingError(f"training loss became non-finite at stage {plan.stage_index} "
                            f"round {plan.round_index}")

    eval_losses = evaluate(model, domains, plan.eval_domains, plan.seq_len, plan.batch_size,
                           plan.eval_batches, device)
    meta = {"run_id": plan.run_id, "stage": plan.stage_index, "round": plan.round_index,
            "attempt": plan.attempt, "global_step": plan.global_step_start + plan.num_steps,
            "model_signature": signature, "tokenizer_hash": plan.tokenizer_hash}
    try:
        ckpt = save_checkpoint(plan.checkpoint_dir, model, trainer.optimizers[0], meta)
    except Exception as exc:  # OSError, or safetensors' own error type for a full disk
        raise TrainingError(f"saving checkpoint {plan.checkpoint_dir} failed: {type(exc).__name__}: {exc}") from None

    tokens = plan.num_steps * plan.batch_size * plan.seq_len
    counts = module.domain_count.tolist()
    return RoundResult(
        checkpoint=str(ckpt), eval_losses=eval_losses, eval_before=eval_before,
        train_losses=module.losses, domain_train_losses=module.domain_losses(), lrs=module.lrs,
        tokens=tokens,
        domain_tokens={n: int(c) * plan.seq_len for n, c in zip(sampler.names, counts, strict=True) if c},
        tokens_per_s=tokens / max(fit_s, 1e-9), wall_s=time.perf_counter() - t0, domain_loss_trace=module.trace)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
