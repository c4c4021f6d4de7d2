"""Replay buffer in preallocated arrays, in the batched layout ``[capacity, num_agents, ...]``.

Stores raw observations and raw (env-wrapped) rewards; normalization and reward transforms are applied
at sampling time by the algorithm with their current statistics. Saves and restores exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

FIELDS = ("obs", "act", "rew", "next_obs", "term")


class ReplayBuffer:
    def __init__(self, capacity: int, num_agents: int, obs_dim: int, act_dim: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, num_agents, obs_dim), np.float32)
        self.act = np.zeros((capacity, num_agents, act_dim), np.float32)
        self.rew = np.zeros((capacity, num_agents), np.float32)
        self.next_obs = np.zeros((capacity, num_agents, obs_dim), np.float32)
        self.term = np.zeros((capacity, num_agents), np.float32)  # 1 = terminated (no bootstrap)
        self.ptr = 0
        self.size = 0
        self.added = 0  # rows ever added (a rewind's check that no row older than its mark was overwritten)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, next_obs: np.ndarray, term: np.ndarray) -> None:
        """Add a batch of transitions (leading axis = env copies)."""
        n = obs.shape[0]
        self.added += n
        if n > self.capacity:  # keep only the newest transitions that fit
            obs, act, rew, next_obs, term = (x[-self.capacity :] for x in (obs, act, rew, next_obs, term))
            n = self.capacity
        idx = (self.ptr + np.arange(n)) % self.capacity
        self.obs[idx], self.act[idx], self.rew[idx] = obs, act, rew
        self.next_obs[idx], self.term[idx] = next_obs, term
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def mark(self) -> dict[str, int]:
        """Where the rows added from now on start (for :meth:`rewind`)."""
        return {"ptr": self.ptr, "size": self.size, "added": self.added}

    def rewind(self, mark: dict[str, int]) -> str:
        """Drop the rows added since ``mark`` (``train.heal`` rolling back: the failing policy's transitions), unless
        the buffer wrapped far enough to overwrite rows older than the mark (then every row is kept). Returns
        what was done, in words."""
        since = self.added - int(mark["added"])
        if int(mark["size"]) + since > self.capacity:
            return f"kept the {since} transitions stored since the snapshot (the buffer wrapped over older ones)"
        self.ptr, self.size, self.added = int(mark["ptr"]), int(mark["size"]), int(mark["added"])
        return f"dropped the {since} transitions stored since the snapshot"

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=batch_size)
        return {name: torch.from_numpy(getattr(self, name)[idx]) for name in FIELDS}

    def state_dict(self) -> dict[str, Any]:
        # Only the filled part is saved (a 1e6 buffer early in training is mostly zeros).
        state: dict[str, Any] = {"ptr": self.ptr, "size": self.size, "capacity": self.capacity, "added": self.added}
        for name in FIELDS:
            state[name] = torch.from_numpy(getattr(self, name)[: self.size].copy())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay capacity mismatch: checkpoint {state['capacity']}, config {self.capacity}")
        self.size, self.ptr = int(state["size"]), int(state["ptr"])
        self.added = int(state.get("added", self.size))  # a checkpoint from before the counter: its rows as a floor
        for name in FIELDS:
            arr = np.asarray(state[name])
            if arr.shape[1:] != getattr(self, name).shape[1:]:
                raise ValueError(f"replay field {name} has shape {arr.shape[1:]}, expected {getattr(self, name).shape[1:]}")
            getattr(self, name)[: self.size] = arr
