"""PPO's losses as pure functions, and the per-agent statistics of one update.

Clipped surrogate (Schulman et al. 2017), entropy bonus, value loss (MSE or Huber) with optional value
clipping around the rollout's predictions, as in the MAPPO reference code (Yu et al. 2022).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample clipped surrogate loss -min(r A, clip(r, 1 +- c) A) and its diagnostics (per sample):
    the importance ratio r, approx KL ((r - 1) - log r, Schulman's unbiased low-variance estimator), and
    whether the ratio was outside the clip range."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)
    with torch.no_grad():
        diag = {"ratio": ratio.detach(), "approx_kl": (ratio - 1.0) - log_ratio,
                "clipped": ((ratio - 1.0).abs() > clip).float()}
    return -surrogate, diag


def value_loss(pred: torch.Tensor, target: torch.Tensor, old_pred: torch.Tensor, kind: str, delta: float,
               clip: Optional[float]) -> torch.Tensor:
    """Per-sample value loss: ``kind`` mse (0.5 e^2) or huber (delta); with ``clip``, the larger of the loss at
    the prediction and at the prediction clipped to old_pred +- clip (the reference's clipped value loss)."""

    def loss(p: torch.Tensor) -> torch.Tensor:
        if kind == "huber":
            return F.huber_loss(p, target, reduction="none", delta=delta)
        return 0.5 * (p - target) ** 2

    out = loss(pred)
    if clip is not None:
        clipped = old_pred + (pred - old_pred).clamp(-clip, clip)
        out = torch.maximum(out, loss(clipped))
    return out


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) per agent over [..., N] (NaN where the returns are constant)."""
    y, v = returns.reshape(-1, returns.shape[-1]), values.reshape(-1, values.shape[-1])
    var_y = y.var(dim=0, unbiased=False)
    ev = 1.0 - (y - v).var(dim=0, unbiased=False) / var_y
    return torch.where(var_y > 0, ev, torch.full_like(ev, math.nan))


class UpdateAccumulator:
    """Per-agent statistics over all minibatch steps of one update: means (policy/value loss, entropy, approx
    KL, clip fraction) and extremes (importance-ratio max/min)."""

    MEANS = ("loss/policy", "loss/value", "policy/entropy", "policy/approx_kl", "policy/clip_fraction")

    def __init__(self, num_agents: int) -> None:
        self.sums = {k: torch.zeros(num_agents, dtype=torch.float64) for k in self.MEANS}
        self.counts = torch.zeros(num_agents, dtype=torch.float64)
        self.ratio_max = torch.full((num_agents,), -math.inf, dtype=torch.float64)
        self.ratio_min = torch.full((num_agents,), math.inf, dtype=torch.float64)

    def add(self, agents: torch.Tensor, values: dict[str, torch.Tensor], ratio: torch.Tensor) -> None:
        """``values[k]``: per-sample tensors [M * n] for the agents ``agents`` (rows agent-minor); ``ratio`` too."""
        n = agents.numel()
        for k, v in values.items():
            self.sums[k][agents] += v.detach().reshape(-1, n).double().mean(0)
        self.counts[agents] += 1
        r = ratio.reshape(-1, n).double()
        self.ratio_max[agents] = torch.maximum(self.ratio_max[agents], r.amax(0))
        self.ratio_min[agents] = torch.minimum(self.ratio_min[agents], r.amin(0))

    def result(self) -> dict[str, torch.Tensor]:
        out = {k: v / self.counts for k, v in self.sums.items()}
        out["policy/ratio_max"], out["policy/ratio_min"] = self.ratio_max, self.ratio_min
        return out
