"""simple_speaker_listener_v4: a static speaker guides a silent listener."""

from __future__ import annotations

from typing import Any

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import (
    Scenario,
    WorldState,
    landmark_index,
    put_pairs,
)


class SpeakerListenerScenario(Scenario):
    """simple_speaker_listener_v4 (no task kwargs)."""

    _COLORS = np.array([[0.65, 0.15, 0.15], [0.15, 0.65, 0.15], [0.15, 0.15, 0.65]])

    def __init__(self) -> None:
        super().__init__(
            name="simple_speaker_listener_v4",
            agent_names=("speaker_0", "listener_0"),
            n_landmarks=3,
            dim_c=3,
            movable=np.array([False, True]),
            silent=np.array([False, True]),
            agent_size=np.full(2, 0.075),
            agent_collide=np.zeros(2, dtype=bool),
            landmark_size=np.full(3, 0.04),
            landmark_collide=np.zeros(3, dtype=bool),
            landmark_colors=self._COLORS.copy(),
            n_goals=1,  # goals[:, 0] = the listener's target landmark
            local_ratio=None,
            obs_dims=(3, 11),
        )
        self._colors_t = np.ascontiguousarray(self.landmark_colors.T)  # [3, L]

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        # speaker: [goal colour]; listener: [self_vel, landmark_rel, speaker comm]
        out[0, 0:3] = self._colors_t[:, s.goals[0]]
        col = put_pairs(out, slice(1, 2), 0, s.vel[:, 1:2, None])
        put_pairs(out, slice(1, 2), col, rel[:, 1:2, 2:])
        out[1, 8:11] = s.comm[0]

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        # Squared distance (no sqrt) listener -> goal, shared by both agents.
        cols = np.arange(s.pos.shape[2])
        delta = s.pos[:, 1] - s.pos[:, 2 + s.goals[0], cols]  # [2, B]
        sq = delta * delta
        r = -(sq[0] + sq[1])
        return np.stack([r, r])

    def goals_from_mpe(self, world: Any) -> list[int]:
        speaker, listener = world.agents
        if speaker.goal_a is not listener:
            raise ValueError("speaker goal_a must be the listener")
        return [landmark_index(world, speaker.goal_b)]

    def goals_to_mpe(self, world: Any, goals: np.ndarray) -> None:
        speaker, listener = world.agents
        for lm, color in zip(world.landmarks, self.landmark_colors):
            lm.color = color.copy()
        speaker.goal_a, speaker.goal_b = listener, world.landmarks[int(goals[0])]
        listener.goal_a = listener.goal_b = None
        speaker.color = np.array([0.25, 0.25, 0.25])
        listener.color = speaker.goal_b.color + np.array([0.45, 0.45, 0.45])
