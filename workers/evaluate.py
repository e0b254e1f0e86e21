"""Per-domain validation loss on fixed windows of each domain's val split."""

from __future__ import annotations

import torch

from store.datasets import DomainData
from workers.data import val_batches
from workers.module import token_losses


@torch.no_grad()
def evaluate(model, domains: dict[str, DomainData], names: list[str], seq_len: int, batch_size: int,
             n_batches: int, device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    out = {}
    for name in names:
        losses = [token_losses(model, b.to(device)).mean().item()
                  for b in val_batches(domains[name], seq_len, batch_size, n_batches)]
        out[name] = sum(losses) / len(losses)
    model.train(was_training)
    return out
