"""simple_crypto_v3: Alice encrypts the goal with a shared key for Bob; Eve eavesdrops. Nobody moves."""

from __future__ import annotations

from typing import Any

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import (
    Scenario,
    WorldState,
    landmark_index,
    sum_sq,
)

_EVE, _BOB, _ALICE = 0, 1, 2


class CryptoScenario(Scenario):
    """simple_crypto_v3 (no task kwargs). Landmark colours are one-hot vectors of length dim_c = 4."""

    def __init__(self) -> None:
        dim_c = 4
        super().__init__(
            name="simple_crypto_v3",
            agent_names=("eve_0", "bob_0", "alice_0"),
            n_landmarks=2,
            dim_c=dim_c,
            movable=np.zeros(3, dtype=bool),
            silent=np.zeros(3, dtype=bool),
            agent_size=np.full(3, 0.05),
            agent_collide=np.zeros(3, dtype=bool),
            landmark_size=np.full(2, 0.05),
            landmark_collide=np.zeros(2, dtype=bool),
            landmark_colors=np.eye(dim_c)[:2],
            n_goals=2,  # goals[0] = the goal landmark, goals[1] = the key landmark
            local_ratio=None,
            obs_dims=(4, 8, 8),
            uses_geometry=False,  # nobody moves; only messages, goal and key matter
        )
        self._colors_t = np.ascontiguousarray(self.landmark_colors.T)  # [dim_c, L]

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        goal = self._colors_t[:, s.goals[0]]  # [4, B]
        key = self._colors_t[:, s.goals[1]]
        alice_says = s.comm[_ALICE]
        out[_EVE, 0:4] = alice_says  # eve: [alice's message]
        out[_BOB, 0:4] = key  # bob: [key, alice's message]
        out[_BOB, 4:8] = alice_says
        out[_ALICE, 0:4] = goal  # alice: [goal colour, key]
        out[_ALICE, 4:8] = key

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        goal = self._colors_t[:, s.goals[0]]
        # A listener that says nothing (an all-zero message) is skipped by mpe2.
        eve_says, bob_says = s.comm[_EVE].any(axis=0), s.comm[_BOB].any(axis=0)
        eve_err, bob_err = sum_sq(s.comm[_EVE] - goal), sum_sq(s.comm[_BOB] - goal)
        eve_rew = np.where(eve_says, -eve_err, 0.0)  # rew = 0; rew -= |eve - goal|^2
        adv = np.where(eve_says, eve_err, 0.0)  # adv_rew += |eve - goal|^2
        good = np.where(bob_says, -bob_err, 0.0)  # good_rew -= |bob - goal|^2
        team = adv + good
        return np.stack([eve_rew, team, team])

    def goals_from_mpe(self, world: Any) -> list[int]:
        goal = world.agents[0].goal_a
        if any(agent.goal_a is not goal for agent in world.agents):
            raise ValueError("every simple_crypto agent must share one goal")
        key = world.agents[_ALICE].key
        matches = [i for i, lm in enumerate(world.landmarks) if np.array_equal(lm.color, key)]
        if len(matches) != 1:
            raise ValueError("simple_crypto key must be one landmark's colour")
        return [landmark_index(world, goal), matches[0]]

    def goals_to_mpe(self, world: Any, goals: np.ndarray) -> None:
        for lm, color in zip(world.landmarks, self.landmark_colors):
            lm.color = color.copy()
        goal = world.landmarks[int(goals[0])]
        for agent in world.agents:
            agent.color = np.array([0.25, 0.25, 0.25])
            agent.key = None
            agent.goal_a = goal
        world.agents[_EVE].color = np.array([0.75, 0.25, 0.25])
        world.agents[_BOB].color = goal.color
        world.agents[_ALICE].key = world.landmarks[int(goals[1])].color
