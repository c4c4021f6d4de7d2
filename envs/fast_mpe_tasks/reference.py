"""simple_reference_v3: each agent tells the other which landmark to reach."""

from __future__ import annotations

from typing import Any

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import (
    Scenario,
    WorldState,
    landmark_index,
    put_pairs,
)


class ReferenceScenario(Scenario):
    """simple_reference_v3 (kwarg ``local_ratio``)."""

    _COLORS = np.array([[0.75, 0.25, 0.25], [0.25, 0.75, 0.25], [0.25, 0.25, 0.75]])

    def __init__(self, local_ratio: float) -> None:
        super().__init__(
            name="simple_reference_v3",
            agent_names=("agent_0", "agent_1"),
            n_landmarks=3,
            dim_c=10,
            movable=np.ones(2, dtype=bool),
            silent=np.zeros(2, dtype=bool),
            agent_size=np.full(2, 0.05),
            agent_collide=np.zeros(2, dtype=bool),
            landmark_size=np.full(3, 0.05),
            landmark_collide=np.zeros(3, dtype=bool),
            landmark_colors=self._COLORS.copy(),
            n_goals=2,  # goals[:, i] = landmark that agent i wants the *other* agent at
            local_ratio=float(local_ratio),
            obs_dims=(21, 21),
        )
        self._oth = self._others()
        self._colors_t = np.ascontiguousarray(self.landmark_colors.T)  # [3, L]

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        n = self.n_agents
        # [self_vel, landmark_rel, own goal_b colour, other comm], x/y interleaved.
        col = put_pairs(out, slice(None), 0, s.vel[:, :, None])
        col = put_pairs(out, slice(None), col, rel[:, :, n:])
        out[:, 8:11] = self._colors_t[:, s.goals].transpose(1, 0, 2)
        out[:, 11:21] = s.comm[self._oth[:, 0]]

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        # Agent i is rewarded by -|other agent - landmark goals[i]|.
        cols = np.arange(dist.shape[2])[None, :]
        idx = self.n_agents + s.goals  # [2, B] entity index of each goal_b
        return -dist[self._oth[:, 0][:, None], idx, cols]  # -dist[other(i), goal_i, b]

    def global_reward(self, s: WorldState, dist: np.ndarray, agent_rew: np.ndarray) -> np.ndarray:
        # mpe2: sum(generator) / len(agents); sum starts at int 0 (0 + r0 == r0).
        total = agent_rew[0]
        for i in range(1, self.n_agents):
            total = total + agent_rew[i]
        return total / self.n_agents

    def goals_from_mpe(self, world: Any) -> list[int]:
        for i, agent in enumerate(world.agents):
            if agent.goal_a is not world.agents[1 - i]:
                raise ValueError("reference goal_a must be the other agent")
        return [landmark_index(world, a.goal_b) for a in world.agents]

    def goals_to_mpe(self, world: Any, goals: np.ndarray) -> None:
        for lm, color in zip(world.landmarks, self.landmark_colors):
            lm.color = color.copy()
        for i, agent in enumerate(world.agents):
            agent.goal_a = world.agents[1 - i]
            agent.goal_b = world.landmarks[int(goals[i])]
            agent.color = np.array([0.25, 0.25, 0.25])
        # mpe2 colours each agent like the landmark the *other* agent wants it at.
        for agent in world.agents:
            agent.goal_a.color = agent.goal_b.color
