"""simple_push_v3: a good agent reaches its goal landmark while an adversary pushes it away."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.fast_mpe_tasks.base import Scenario, WorldState, landmark_index, put_pairs


def _landmark_colors() -> np.ndarray:
    """mpe2: ``[0.1, 0.1, 0.1]`` with ``color[i + 1] += 0.8`` (computed the same way, same rounding)."""
    colors = np.full((2, 3), 0.1)
    for i in range(2):
        colors[i, i + 1] += 0.8
    return colors


class PushScenario(Scenario):
    """simple_push_v3 (no task kwargs): adversary_0, agent_0, two landmarks, one goal."""

    def __init__(self) -> None:
        super().__init__(
            name="simple_push_v3",
            agent_names=("adversary_0", "agent_0"),
            n_landmarks=2,
            dim_c=2,
            movable=np.ones(2, dtype=bool),
            silent=np.ones(2, dtype=bool),
            agent_size=np.full(2, 0.05),
            agent_collide=np.ones(2, dtype=bool),
            landmark_size=np.full(2, 0.05),
            landmark_collide=np.zeros(2, dtype=bool),
            landmark_colors=_landmark_colors(),
            n_goals=1,
            local_ratio=None,
            obs_dims=(8, 19),
        )
        self._colors_t = np.ascontiguousarray(self.landmark_colors.T)  # [3, L]
        # The good agent's colour: [0.25]*3 with [goal + 1] += 0.5, for goal 0 and 1.
        agent_colors = np.full((2, 3), 0.25)
        for j in range(2):
            agent_colors[j, j + 1] += 0.5
        self._agent_colors_t = np.ascontiguousarray(agent_colors.T)  # [3, goal]

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        cols = np.arange(rel.shape[3])
        # adversary: [vel, landmark_rel, other_rel]
        col = put_pairs(out, slice(0, 1), 0, s.vel[:, 0:1, None])
        col = put_pairs(out, slice(0, 1), col, rel[:, 0:1, 2:])
        put_pairs(out, slice(0, 1), col, rel[:, 0:1, 1:2])
        # good: [vel, goal_rel, own colour, landmark_rel, landmark colours, other_rel]
        col = put_pairs(out, slice(1, 2), 0, s.vel[:, 1:2, None])
        col = put_pairs(out, slice(1, 2), col, rel[:, 1:2, 2 + s.goals[0], cols][:, :, None])
        out[1, col : col + 3] = self._agent_colors_t[:, s.goals[0]]
        col = put_pairs(out, slice(1, 2), col + 3, rel[:, 1:2, 2:])
        out[1, col : col + 6] = self.landmark_colors.reshape(6, 1)
        put_pairs(out, slice(1, 2), col + 6, rel[:, 1:2, 0:1])

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        cols = np.arange(dist.shape[2])
        to_goal = dist[:, 2 + s.goals[0], cols]  # [2, B]
        good = -to_goal[1]
        adversary = to_goal[1] - to_goal[0]  # min over the one good agent, minus its own distance
        return np.stack([adversary, good])

    def goals_from_mpe(self, world: Any) -> list[int]:
        goal = world.agents[0].goal_a
        if any(agent.goal_a is not goal for agent in world.agents):
            raise ValueError("every simple_push agent must share one goal")
        return [landmark_index(world, goal)]

    def goals_to_mpe(self, world: Any, goals: np.ndarray) -> None:
        for i, lm in enumerate(world.landmarks):
            lm.color = self.landmark_colors[i].copy()
            lm.index = i
        goal = world.landmarks[int(goals[0])]
        world.agents[0].color = np.array([0.75, 0.25, 0.25])
        world.agents[1].color = self._agent_colors_t[:, int(goals[0])].copy()
        for agent in world.agents:
            agent.goal_a = goal
