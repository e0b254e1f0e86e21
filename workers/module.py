"""LightningModule around an HF causal LM: AdamW, LR set from the pure schedule each step,
per-domain training loss."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from workers.sample_weights import weighted_loss


def token_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each sequence in a [B, L+1] batch -> [B]."""
    logits = model(input_ids=ids[:, :-1]).logits
    loss = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
    return loss.mean(dim=1)


class CausalLMModule(L.LightningModule):
    def __init__(self, model, lr_fn: Callable[[int], float], first_step: int, domain_names: list[str],
                 optimizer: dict[str, Any], progress_path: str | None = None, init_optimizer_state=None,
                 sample_loss: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.lr_fn, self.first_step, self.domain_names = lr_fn, first_step, domain_names
        self.opt_cfg = optimizer
        self.progress_path = progress_path
        self.init_optimizer_state = init_optimizer_state
        self.sample_loss = sample_loss
        # per-domain mean loss at each step (None where the domain was not drawn): RECAP's signal
        self.trace: dict[str, list[float | None]] = {n: [] for n in domain_names}
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.domain_sum = torch.zeros(len(domain_names), dtype=torch.float64)
        self.domain_count = torch.zeros(len(domain_names), dtype=torch.float64)
        self._t0 = time.perf_counter()

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.model.parameters():
            (decay if p.dim() >= 2 else no_decay).append(p)
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.opt_cfg["weight_decay"]},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr_fn(self.first_step), betas=tuple(self.opt_cfg["betas"]), eps=self.opt_cfg["eps"])

    def on_fit_start(self) -> None:
        if self.init_optimizer_state is not None:
            self.init_optimizer_state(self.trainer.optimizers[0])

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        lr = self.lr_fn(self.first_step + batch_idx)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr
        self.lrs.append(lr)

    def training_step(self, batch, batch_idx: int):
        ids, dom = batch
        per_seq = token_losses(self.model, ids)
        with torch.no_grad():
            d = dom.to(self.domain_sum.device)
            step_sum = torch.zeros_like(self.domain_sum).index_add_(0, d, per_seq.detach().double().cpu())
            step_cnt = torch.zeros_like(self.domain_count).index_add_(
                0, d, torch.ones_like(per_seq, dtype=torch.float64).cpu())
            self.domain_sum += step_sum
            self.domain_count += step_cnt
            for i, n in enumerate(self.domain_names):
                self.trace[n].append(float(step_sum[i] / step_cnt[i]) if step_cnt[i] else None)
        self.losses.append(float(per_seq.detach().mean()))  # logged loss stays the plain mean
        return weighted_loss(per_seq, self.sample_loss, self.first_step + batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.progress_path and (batch_idx % 5 == 0 or batch_idx == self.trainer.max_steps - 1):
            with open(self.progress_path, "a") as f:
                f.write(json.dumps({"step": self.first_step + batch_idx + 1, "loss": self.losses[-1],
                                    "lr": self.lrs[-1], "t": time.time(), "pid": os.getpid()}) + "\n")

    def domain_losses(self) -> dict[str, float]:
        return {n: float(self.domain_sum[i] / self.domain_count[i])
                for i, n in enumerate(self.domain_names) if self.domain_count[i] > 0}
