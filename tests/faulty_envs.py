"""A user's environment that fails on purpose, for the env-boundary tests (``tests/test_edges.py``).

``--env faulty_envs:make`` (the tests folder is on ``sys.path`` under pytest) builds a small PettingZoo
``ParallelEnv``: two agents move a point each towards the origin (reward −distance), episodes end by truncation
after ``max_cycles`` steps. ``fail`` picks what goes wrong and ``at`` when, counted per env instance from its
construction (1-based), so the n-th ``step()`` (or ``reset()``) of the training env fails at a known env step:

* ``nan_obs``: agent ``agent``'s observation is NaN on step ``at``;
* ``nan_reward`` / ``inf_reward``: its reward is NaN / +inf on step ``at``;
* ``raise_step`` / ``raise_reset``: ``step()`` / ``reset()`` number ``at`` raises ``RuntimeError``;
* ``none``: a healthy env.

It is deterministic under ``reset(seed)`` plus actions, as docs/environments.md asks of users' envs.
"""

from __future__ import annotations

from typing import Any

import gymnasium.spaces
import numpy as np
from pettingzoo.utils.env import ParallelEnv

FAILURES = ("none", "nan_obs", "nan_reward", "inf_reward", "raise_step", "raise_reset")


class FaultyEnv(ParallelEnv):
    """Two point agents on a plane; fails as configured (see the module docstring)."""

    metadata: dict[str, Any] = {"name": "faulty_v0"}

    def __init__(self, fail: str = "none", at: int = 1, agent: int = 1, max_cycles: int = 25) -> None:
        if fail not in FAILURES:
            raise ValueError(f"fail must be one of {FAILURES}, got {fail!r}")
        self.fail, self.at, self.bad_agent, self.max_cycles = fail, int(at), f"a_{agent}", int(max_cycles)
        self.possible_agents = ["a_0", "a_1"]
        self.agents: list[str] = []
        self._obs_space = gymnasium.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self._act_space = gymnasium.spaces.Box(0.0, 1.0, (2,), np.float32)
        self._pos = np.zeros((2, 2))
        self._t = 0
        self.steps_called = self.resets_called = 0

    def observation_space(self, agent: str) -> gymnasium.spaces.Box:
        return self._obs_space

    def action_space(self, agent: str) -> gymnasium.spaces.Box:
        return self._act_space

    def _obs(self, poison: bool) -> dict[str, np.ndarray]:
        out = {}
        for i, a in enumerate(self.agents):
            o = np.array([*self._pos[i], self._t / self.max_cycles], np.float32)
            if poison and a == self.bad_agent:
                o[1] = np.nan
            out[a] = o
        return out

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.resets_called += 1
        if self.fail == "raise_reset" and self.resets_called == self.at:
            raise RuntimeError(f"simulator lost its license on reset {self.resets_called}")
        self._pos = np.random.default_rng(seed).uniform(-1, 1, (2, 2))
        self.agents, self._t = list(self.possible_agents), 0
        return self._obs(False), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        self.steps_called += 1
        now = self.steps_called == self.at
        if self.fail == "raise_step" and now:
            raise RuntimeError(f"simulator diverged on step {self.steps_called}")
        for i, a in enumerate(self.agents):
            act = np.asarray(actions[a], np.float64)
            self._pos[i] += 0.1 * (act - 0.5)
        self._t += 1
        rewards = {a: float(-np.linalg.norm(self._pos[i])) for i, a in enumerate(self.agents)}
        if now and self.fail in ("nan_reward", "inf_reward"):
            rewards[self.bad_agent] = float("nan") if self.fail == "nan_reward" else float("inf")
        obs = self._obs(now and self.fail == "nan_obs")
        trunc = {a: self._t >= self.max_cycles for a in self.agents}
        term = {a: False for a in self.agents}
        infos: dict[str, dict] = {a: {} for a in self.agents}
        if self._t >= self.max_cycles:
            self.agents = []
        return obs, rewards, term, trunc, infos


def make(**kwargs: Any) -> FaultyEnv:
    """The factory ``--env faulty_envs:make`` names; kwargs from ``env.kwargs``."""
    return FaultyEnv(**kwargs)
