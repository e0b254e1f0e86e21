"""Instance-level loss-based sample re-weighting (Sow et al., ICLR 2025).

Per step, each sequence's mean token loss is normalised to [-1, 1] over the batch, mapped by a
strategy f, and turned into weights w = softmax((f - max f) / r); the step's loss is sum_i w_i l_i.
Weights are computed without gradient (they re-weight, they are not optimised). Combinable with
any mixer: mixers choose *which domains* are sampled, this chooses *how much each sample counts*.
"""

from __future__ import annotations

import torch

STRATEGIES = ("uniform", "linupper", "quadratic", "extremes")


def sample_weights(losses: torch.Tensor, kind: str, r: float = 1.0) -> torch.Tensor:
    """Weights (summing to 1) for per-sample losses [B]. Pure; no gradient flows through them."""
    with torch.no_grad():
        b = losses.numel()
        if kind == "uniform" or b < 2:
            return torch.full_like(losses, 1.0 / b)
        lo, hi = losses.min(), losses.max()
        span = (hi - lo).clamp_min(1e-12)
        x = 2 * losses / span - (hi + lo) / span  # in [-1, 1]
        if kind == "linupper":
            f = torch.clamp(x + 1.0, max=1.0)
        elif kind == "quadratic":
            f = 1.0 - x**2
        elif kind == "extremes":
            f = x.abs()
        else:
            raise ValueError(f"unknown sample re-weighting {kind!r}; valid: {', '.join(STRATEGIES)}")
        return torch.softmax((f - f.max()) / r, dim=0)


def weighted_loss(losses: torch.Tensor, spec: dict | None, step: int) -> torch.Tensor:
    if not spec or spec.get("kind", "uniform") == "uniform" or step < spec.get("burn_in", 0):
        return losses.mean()
    return (sample_weights(losses, spec["kind"], spec.get("r", 1.0)) * losses).sum()
