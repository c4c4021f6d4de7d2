"""simple_line_v1: N agents line up, evenly spaced, between two landmarks (shared reward)."""

from __future__ import annotations

from typing import Any

import numpy as np
from marl_stability.envs.fast_mpe_tasks.assignment import (
    DIST_THRESHOLD,
    matched_distance_reward,
    shared_rows,
)
from marl_stability.envs.fast_mpe_tasks.base import (
    AuxSpec,
    Scenario,
    WorldState,
    put_pairs,
)

TOTAL_SEP = 1.25


class LineScenario(Scenario):
    """simple_line_v1 (kwarg ``N``); the target positions are fixed at reset (state ``targets``)."""

    def __init__(self, n: int, terminate_on_success: bool = False) -> None:
        super().__init__(
            name="simple_line_v1",
            agent_names=tuple(f"agent_{i}" for i in range(n)),
            n_landmarks=2,
            dim_c=0,
            movable=np.ones(n, dtype=bool),
            silent=np.ones(n, dtype=bool),
            agent_size=np.full(n, 0.03),
            agent_collide=np.ones(n, dtype=bool),
            landmark_size=np.full(2, 0.02),
            landmark_collide=np.zeros(2, dtype=bool),
            landmark_colors=np.full((2, 3), 0.25),
            n_goals=0,
            local_ratio=None,
            obs_dims=(8,) * n,
            terminate_on_success=terminate_on_success,
        )
        self._matched: np.ndarray | None = None  # this step's assigned distances (mpe2's _delta_dists)
        self._ideal_sep = TOTAL_SEP / (n - 1) if n > 1 else 0.0

    def aux_spec(self) -> AuxSpec:
        return {"targets": ((2, self.n_agents), np.float64)}

    def sample_start(self, rng: np.random.Generator, k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Agents in [-1, 1]^2, landmark 0 in [-0.25, 0.25]^2, landmark 1 at 1.25 from it in a random
        direction turned by 5° steps until it lies inside (-1, 1)^2 (mpe2's loop); the targets
        ``landmark_0 + i * ideal_sep * direction``."""
        agents = rng.uniform(-1.0, 1.0, size=(k, self.n_agents, 2))
        first = rng.uniform(-0.25, 0.25, size=(k, 2))
        theta = rng.uniform(0.0, 2 * np.pi, size=k)
        second = np.empty((k, 2))
        todo = np.arange(k)
        while todo.size:
            direction = np.stack([np.cos(theta[todo]), np.sin(theta[todo])], axis=1)
            loc = first[todo] + TOTAL_SEP * direction
            inside = (np.abs(loc[:, 0]) < 1.0) & (np.abs(loc[:, 1]) < 1.0)
            second[todo[inside]] = loc[inside]
            todo = todo[~inside]
            theta[todo] += np.radians(5)
        direction = np.stack([np.cos(theta), np.sin(theta)])  # [2, k]
        steps = np.arange(self.n_agents)[:, None] * self._ideal_sep  # [N, 1]: i * ideal_sep
        targets = first.T[:, None] + steps[None] * direction[:, None]  # [2, N, k]
        pos = np.concatenate([agents, first[:, None], second[:, None]], axis=1)
        return pos, {"targets": targets}

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        n = self.n_agents
        # [self_vel, self_pos, landmark_0_rel, landmark_1_rel]
        col = put_pairs(out, slice(None), 0, s.vel[:, :, None])
        col = put_pairs(out, slice(None), col, s.pos[:, :n, None])
        put_pairs(out, slice(None), col, rel[:, :, n:])

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        n = self.n_agents
        shared, self._matched = matched_distance_reward(s.pos[:, :n], s.aux["targets"])
        return shared_rows(shared, n)

    def aux_from_mpe(self, raw_env: Any) -> dict[str, np.ndarray]:
        expected = raw_env.scenario._expected_positions
        return {"targets": np.array(expected, dtype=np.float64).reshape(self.n_agents, 2).T}

    def terminal(self, s: WorldState, dist: np.ndarray) -> np.ndarray | None:
        """mpe2: every assigned distance below 0.05, from the assignment this step's reward made."""
        if not self.terminate_on_success or self._matched is None:
            return None
        return (self._matched < DIST_THRESHOLD).all(axis=0)
