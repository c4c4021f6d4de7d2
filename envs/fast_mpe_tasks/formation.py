"""simple_formation_v1: N agents form a circle of radius 0.5 around a landmark (shared reward)."""

from __future__ import annotations

import numpy as np
from marl_stability.envs.fast_mpe_tasks.assignment import (
    DIST_THRESHOLD,
    matched_distance_reward,
    shared_rows,
)
from marl_stability.envs.fast_mpe_tasks.base import Scenario, WorldState, put_pairs

TARGET_RADIUS = 0.5


class FormationScenario(Scenario):
    """simple_formation_v1 (kwarg ``N``); mpe2 runs it with ``local_ratio=0``: every agent gets the
    shared reward."""

    def __init__(self, n: int, terminate_on_success: bool = False) -> None:
        super().__init__(
            name="simple_formation_v1",
            agent_names=tuple(f"agent_{i}" for i in range(n)),
            n_landmarks=1,
            dim_c=0,
            movable=np.ones(n, dtype=bool),
            silent=np.ones(n, dtype=bool),
            agent_size=np.full(n, 0.05),
            agent_collide=np.ones(n, dtype=bool),
            landmark_size=np.full(1, 0.03),
            landmark_collide=np.zeros(1, dtype=bool),
            landmark_colors=np.full((1, 3), 0.25),
            n_goals=0,
            local_ratio=None,
            obs_dims=(6,) * n,
            landmark_range=0.5,
            terminate_on_success=terminate_on_success,
        )
        self._matched: np.ndarray | None = None  # this step's assigned distances (mpe2's _delta_dists)
        self._phase_steps = np.arange(n)[:, None] * ((2 * np.pi) / n)  # [N, 1]: i * 2π / N

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        n = self.n_agents
        # [self_vel, self_pos, landmark_rel]
        col = put_pairs(out, slice(None), 0, s.vel[:, :, None])
        col = put_pairs(out, slice(None), col, s.pos[:, :n, None])
        put_pairs(out, slice(None), col, rel[:, :, n:])

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        n = self.n_agents
        centre = s.pos[:, n]  # [2, B]
        offset = s.pos[:, :n] - centre[:, None]  # agent - landmark
        angle = np.arctan2(offset[1], offset[0])
        angle = np.where(angle < 0, angle + 2 * np.pi, angle)
        theta_min = angle.min(axis=0)  # [B]
        phase = theta_min[None, :] + self._phase_steps  # [N, B]
        # centre + TARGET_RADIUS * [cos, sin], written in place (the same products and sums)
        targets = np.empty((2,) + phase.shape)
        np.cos(phase, out=targets[0])
        np.sin(phase, out=targets[1])
        targets *= TARGET_RADIUS
        targets += centre[:, None]
        shared, self._matched = matched_distance_reward(s.pos[:, :n], targets)
        # mpe2: global * (1 - 0) + agent * 0 with agent == 0.0: exactly the shared reward.
        return shared_rows(shared, n)

    def terminal(self, s: WorldState, dist: np.ndarray) -> np.ndarray | None:
        """mpe2: every assigned distance below 0.05, from the assignment this step's reward made."""
        if not self.terminate_on_success or self._matched is None:
            return None
        return (self._matched < DIST_THRESHOLD).all(axis=0)
