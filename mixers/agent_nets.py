"""The agent's networks: permutation-equivariant over domains, so one agent mixes any number of them.

Each domain row is normalised, then seen together with the mean row of the targets (role 1), the
mean row of the sources (role 0) and the global features (a Deep Sets layout). The policy scores
every domain with one shared MLP and reads the scores as Dirichlet concentrations; the value
function sees only the pooled context; CQL's critic Q(s, a) scores (row, context, weight) per
domain and averages. Batches hold states with the same number of domains (`Batch`); training
groups transitions by K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def _mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, n_out))


@dataclass
class Batch:
    """States with K domains each: x [N, K, F] domain rows, g [N, G] global features."""

    x: torch.Tensor
    g: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


class MixingNets(nn.Module):
    def __init__(self, per_domain: int, n_global: int, hidden: int = 64):
        super().__init__()
        f, g = per_domain, n_global
        ctx = 2 * f + g
        self.policy = _mlp(f + ctx, 1, hidden)
        self.value = _mlp(ctx, 1, hidden)
        self.q_row = _mlp(f + ctx + 1, hidden, hidden)
        self.q_out = nn.Sequential(nn.Tanh(), nn.Linear(hidden, 1))
        # input normalisation, fitted on the training transitions and saved with the agent
        self.register_buffer("x_mean", torch.zeros(f))
        self.register_buffer("x_std", torch.ones(f))
        self.register_buffer("g_mean", torch.zeros(g))
        self.register_buffer("g_std", torch.ones(g))

    def fit_normalisation(self, batches: list[Batch]) -> None:
        xs = torch.cat([b.x.reshape(-1, b.x.shape[-1]) for b in batches])
        gs = torch.cat([b.g for b in batches])
        def spread(v: torch.Tensor) -> torch.Tensor:
            # a feature (nearly) constant in training is centred, not scaled: dividing by its tiny
            # spread would blow a different value at inference (another setting) up a thousandfold
            std = v.std(0) if len(v) > 1 else torch.ones(v.shape[1])
            return torch.where(std < 1e-3, torch.ones_like(std), std)

        self.x_mean.copy_(xs.mean(0))
        self.x_std.copy_(spread(xs))
        self.g_mean.copy_(gs.mean(0))
        self.g_std.copy_(spread(gs))
        self.x_mean[0], self.x_std[0] = 0.0, 1.0  # the role stays 0/1: pooling reads it

    def context(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (per-domain inputs [N, K, F + ctx], pooled context [N, ctx])."""
        x = (b.x - self.x_mean) / self.x_std
        g = (b.g - self.g_mean) / self.g_std
        role = b.x[..., :1]

        def pool(mask: torch.Tensor) -> torch.Tensor:
            return (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)

        ctx = torch.cat([pool(role), pool(1 - role), g], dim=-1)
        return torch.cat([x, ctx.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1), ctx

    def concentration(self, b: Batch) -> torch.Tensor:
        rows, _ = self.context(b)
        return F.softplus(self.policy(rows).squeeze(-1)) + 0.05

    def dist(self, b: Batch) -> torch.distributions.Dirichlet:
        return torch.distributions.Dirichlet(self.concentration(b))

    def v(self, b: Batch) -> torch.Tensor:
        return self.value(self.context(b)[1]).squeeze(-1)

    def q(self, b: Batch, a: torch.Tensor) -> torch.Tensor:
        """Q(s, a) for actions a [S, N, K] (S samples per state) -> [S, N]."""
        rows, _ = self.context(b)
        rows = rows.unsqueeze(0).expand(a.shape[0], -1, -1, -1)
        h = self.q_row(torch.cat([rows, a.unsqueeze(-1)], dim=-1)).mean(dim=2)
        return self.q_out(h).squeeze(-1)

    @torch.no_grad()
    def mean_action(self, rows: list[list[float]], glob: list[float]) -> list[float]:
        alpha = self.concentration(Batch(torch.tensor([rows], dtype=torch.float32),
                                         torch.tensor([glob], dtype=torch.float32)))[0]
        return (alpha / alpha.sum()).tolist()
