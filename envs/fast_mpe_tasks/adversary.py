"""simple_adversary_v3: N good agents hide which of N landmarks is the goal from one adversary."""

from __future__ import annotations

from typing import Any

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import (
    Scenario,
    WorldState,
    landmark_index,
    put_pairs,
)


class AdversaryScenario(Scenario):
    """simple_adversary_v3 (kwarg ``N``: good agents and landmarks; one adversary, agent 0)."""

    def __init__(self, n: int) -> None:
        names = ("adversary_0",) + tuple(f"agent_{i}" for i in range(n))
        a = n + 1
        super().__init__(
            name="simple_adversary_v3",
            agent_names=names,
            n_landmarks=n,
            dim_c=2,
            movable=np.ones(a, dtype=bool),
            silent=np.ones(a, dtype=bool),
            agent_size=np.full(a, 0.15),
            agent_collide=np.zeros(a, dtype=bool),
            landmark_size=np.full(n, 0.08),
            landmark_collide=np.zeros(n, dtype=bool),
            landmark_colors=np.full((n, 3), 0.15),
            n_goals=1,  # goals[0] = the goal landmark (shared by every agent)
            local_ratio=None,
            obs_dims=(4 * n,) + (4 * n + 2,) * n,
        )
        self._oth = self._others()
        self._rows = np.arange(a)[:, None]

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        a = self.n_agents
        cols = np.arange(rel.shape[3])
        goal_rel = rel[:, 1:, a + s.goals[0], cols]  # [2, N good, B] goal - agent
        # good agents: [goal_rel, landmark_rel, other_rel]; adversary: [landmark_rel, other_rel]
        put_pairs(out, slice(1, None), 0, goal_rel[:, :, None])
        landmarks, others = rel[:, :, a:], rel[:, self._rows, self._oth]
        col = put_pairs(out, slice(0, 1), 0, landmarks[:, :1])
        put_pairs(out, slice(0, 1), col, others[:, :1])
        col = put_pairs(out, slice(1, None), 2, landmarks[:, 1:])
        put_pairs(out, slice(1, None), col, others[:, 1:])

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        cols = np.arange(dist.shape[2])
        to_goal = dist[:, self.n_agents + s.goals[0], cols]  # [A, B] |agent - goal|
        adv = to_goal[0]  # sum over the one adversary (int 0 + d == d)
        good = to_goal[1:].min(axis=0)
        good_rew = -good + adv  # pos_rew + adv_rew
        return np.concatenate([-to_goal[:1], np.broadcast_to(good_rew, to_goal[1:].shape)])

    def goals_from_mpe(self, world: Any) -> list[int]:
        goal = world.agents[0].goal_a
        if any(agent.goal_a is not goal for agent in world.agents):
            raise ValueError("every simple_adversary agent must share one goal")
        return [landmark_index(world, goal)]

    def goals_to_mpe(self, world: Any, goals: np.ndarray) -> None:
        world.agents[0].color = np.array([0.85, 0.35, 0.35])
        for agent in world.agents[1:]:
            agent.color = np.array([0.35, 0.35, 0.85])
        for lm in world.landmarks:
            lm.color = np.array([0.15, 0.15, 0.15])
        goal = world.landmarks[int(goals[0])]
        goal.color = np.array([0.15, 0.65, 0.15])
        for agent in world.agents:
            agent.goal_a = goal
