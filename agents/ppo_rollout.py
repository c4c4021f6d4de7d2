"""The on-policy rollout (what MAPPO/IPPO collect between updates) and GAE(lambda) with truncation.

mpe2 episodes end by truncation at ``max_cycles``: the state after the last step is not terminal, so its
value is bootstrapped from the critic at the final observation (which the vector env hands over as
``next_obs`` before it resets the copy). Only a true termination cuts the bootstrap. The advantage never
flows across an episode boundary (done = terminated or truncated).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# The arrays of a rollout: name -> (trailing shape from (N, D, A), dtype)
_FIELDS = ("obs", "actions", "log_prob", "values", "values_norm", "reward", "terminated", "done", "bootstrap")


def gae(reward: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        done: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(lambda) over a rollout; every tensor is [T, E, N] (``done`` broadcastable: [T, E, 1]).

    ``next_values[t]``: the value of the state after step t (the final observation's when the episode ended
    at t). delta_t = r_t + gamma (1 - terminated_t) next_value_t - value_t;
    A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}. Returns (advantages, returns = advantages + values).
    """
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    not_term, not_done = 1.0 - terminated, 1.0 - done
    for t in range(values.shape[0] - 1, -1, -1):
        delta = reward[t] + gamma * not_term[t] * next_values[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        adv[t] = last
    return adv, adv + values


class Rollout:
    """``T`` batched env steps of ``E`` env copies and ``N`` agents, filled by ``add`` in order.

    Per step: the (normalized) observations the actors saw [E, N, D], the stored action samples [E, N, A],
    their log-probabilities and the critic's value (denormalized, and its raw normalized output) [E, N], the
    raw env reward, terminated [E, N], done [E], and ``bootstrap`` [E, N]: the value of the final observation
    where the copy's episode ended at this step or this is the rollout's last step (else unused).
    """

    def __init__(self, steps: int, num_envs: int, num_agents: int, obs_dim: int, act_dim: int) -> None:
        self.steps = steps
        t, e, n = steps, num_envs, num_agents
        shapes = {"obs": (t, e, n, obs_dim), "actions": (t, e, n, act_dim), "done": (t, e)}
        self.data = {k: np.zeros(shapes.get(k, (t, e, n)), np.float32) for k in _FIELDS}
        self.ptr = 0

    @property
    def full(self) -> bool:
        return self.ptr >= self.steps

    def add(self, **row: np.ndarray) -> None:
        if self.full:
            raise RuntimeError("rollout is full: update() before adding more steps")
        for k in _FIELDS:
            self.data[k][self.ptr] = row[k]
        self.ptr += 1

    def clear(self) -> None:
        self.ptr = 0

    def tensors(self) -> dict[str, torch.Tensor]:
        """The filled part as tensors (views of the arrays), plus ``next_values`` [T, E, N]: the value of the
        state after each step (the next step's value, or the bootstrap where the episode ended / at the end)."""
        out = {k: torch.from_numpy(v[: self.ptr]) for k, v in self.data.items()}
        next_values = out["bootstrap"].clone()
        live = out["done"][:-1, :, None] < 0.5  # [T-1, E, 1]
        next_values[:-1] = torch.where(live, out["values"][1:], out["bootstrap"][:-1])
        out["next_values"] = next_values
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"ptr": self.ptr, **{k: torch.from_numpy(v[: self.ptr].copy()) for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ptr = int(state["ptr"])
        for k, v in self.data.items():
            v[: self.ptr] = np.asarray(state[k], np.float32)
