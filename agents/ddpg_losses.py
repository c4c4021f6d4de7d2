"""The pure functions of the MADDPG family's update: joint inputs, the TD target, the reward statistics. No state;
both update strategies (``ddpg_updates``) call them, so per-agent and stacked updates compute the same numbers."""

from __future__ import annotations

from typing import Sequence

import torch


def joint(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``[B, N, max_dim]`` -> ``[B, sum(dims)]``: each agent's true slice, concatenated (the critic's input)."""
    return torch.cat([x[:, i, :d] for i, d in enumerate(dims)], dim=-1)


def td_target(reward: torch.Tensor, gamma: float, terminated: torch.Tensor, target_q: torch.Tensor) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * Q'(o', mu'(o')) (``target_q``: already the minimum over twin critics)."""
    return reward + gamma * (1.0 - terminated) * target_q


def reward_stats(raw: torch.Tensor, learner: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw vs learner reward of the batch, per agent ([B, N] -> [N] each)."""
    return {"reward/raw_batch_mean": raw.mean(0), "reward/learner_batch_mean": learner.mean(0),
            "reward/raw_batch_std": raw.std(0), "reward/learner_batch_std": learner.std(0)}
