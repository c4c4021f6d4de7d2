"""simple_v3: one agent moves to one landmark."""

from __future__ import annotations

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import Scenario, WorldState, put_pairs


class SimpleScenario(Scenario):
    """simple_v3 (no task kwargs)."""

    def __init__(self) -> None:
        super().__init__(
            name="simple_v3",
            agent_names=("agent_0",),
            n_landmarks=1,
            dim_c=0,
            movable=np.ones(1, dtype=bool),
            silent=np.ones(1, dtype=bool),
            agent_size=np.full(1, 0.05),
            agent_collide=np.zeros(1, dtype=bool),
            landmark_size=np.full(1, 0.05),
            landmark_collide=np.zeros(1, dtype=bool),
            landmark_colors=np.array([[0.75, 0.25, 0.25]]),
            n_goals=0,
            local_ratio=None,
            obs_dims=(4,),
            uses_distances=False,  # the reward is the squared distance, from the positions
        )

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        # [self_vel, landmark_rel]
        col = put_pairs(out, slice(None), 0, s.vel[:, :, None])
        put_pairs(out, slice(None), col, rel[:, :, 1:])

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        # -|agent - landmark|^2 (squared, no sqrt).
        delta = s.pos[:, 0] - s.pos[:, 1]
        sq = delta * delta
        return -(sq[0] + sq[1])[None, :]

    def goals_to_mpe(self, world: object, goals: np.ndarray) -> None:
        world.agents[0].color = np.array([0.25, 0.25, 0.25])  # type: ignore[attr-defined]
        world.landmarks[0].color = self.landmark_colors[0].copy()  # type: ignore[attr-defined]
