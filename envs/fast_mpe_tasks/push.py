"""simple_push_v3: a good agent reaches its goal landmark while an adversary pushes it away."""

from __future__ import annotations

from typing import Any

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import Scenario, WorldState, landmark_index


def _landmark_colors() -> np.ndarray:
    """mpe2: ``[0.1, 0.1, 0.1]`` with ``color[i + 1] += 0.8`` (computed the same way, same rounding)."""
    colors = np.full((2, 3), 0.1)
    for i in range(2):
        colors[i, i + 1] += 0.8
    return colors


# Rows of the observation source table (PushScenario.observe): velocities (x/y, agent), relative positions
# rel[x/y, agent, entity], the goal candidates per goal (x, y, colour r/g/b for goal 0, then for goal 1), the
# picked goal entries, the landmark colours and a zero row (padding).
_R_VEL, _R_REL, _R_PICK, _R_GOAL, _R_LM_COLORS, _R_ZERO = 0, 4, 20, 30, 35, 41
_ROWS = 42


def _rel(c: int, agent: int, entity: int) -> int:
    return _R_REL + 8 * c + 4 * agent + entity  # rel is [2, N=2, E=4, B]


def _obs_rows() -> np.ndarray:
    """Table row of every observation entry ``out[agent, k]`` (``[2 * 19]``, agent-major; padding: zero row)."""
    adversary = [_R_VEL + 0, _R_VEL + 2]  # own velocity (x, y)
    adversary += [_rel(c, 0, e) for e in (2, 3) for c in (0, 1)] + [_rel(0, 0, 1), _rel(1, 0, 1)]
    good = [_R_VEL + 1, _R_VEL + 3] + [_R_GOAL + k for k in range(5)]  # velocity, goal_rel, own colour
    good += [_rel(c, 1, e) for e in (2, 3) for c in (0, 1)]  # landmarks
    good += [_R_LM_COLORS + k for k in range(6)] + [_rel(0, 1, 0), _rel(1, 1, 0)]  # colours, other agent
    return np.array(adversary + [_R_ZERO] * (19 - len(adversary)) + good, dtype=np.intp)


_OBS_ROWS = _obs_rows()


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
        # The good agent's colour: [0.25]*3 with [goal + 1] += 0.5, for goal 0 and 1.
        agent_colors = np.full((2, 3), 0.25)
        for j in range(2):
            agent_colors[j, j + 1] += 0.5
        self._agent_colors_t = np.ascontiguousarray(agent_colors.T)  # [3, goal]
        self._table: np.ndarray | None = None  # [_ROWS, B] float32, see observe()

    def _source_table(self, b: int) -> np.ndarray:
        """The observation sources of B envs, one float32 row each (see the _R_* layout); allocated once, with
        the constant rows (colours, the zero row for padding) written here."""
        if self._table is None or self._table.shape[1] != b:
            table = np.zeros((_ROWS, b), dtype=np.float32)
            pick = table[_R_PICK : _R_PICK + 10].reshape(2, 5, b)  # [goal, (goal_x, goal_y, r, g, b), B]
            pick[:, 2:] = self._agent_colors_t.T[:, :, None]
            table[_R_LM_COLORS : _R_LM_COLORS + 6] = self.landmark_colors.reshape(6, 1)
            self._table = table
        return self._table

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        """adversary: [vel, landmark_rel, other_rel]; good: [vel, goal_rel, own colour, landmark_rel, landmark
        colours, other_rel]. Every source goes into one float32 table by two casting copies (velocities, the
        relative positions), the goal-dependent entries are picked per env by one ``where`` (goal 0 or 1), and
        one row gather (``take``) writes all of ``out``: the same float64 values cast once to float32, as the
        block-by-block writes gave, in a handful of numpy calls."""
        b = rel.shape[-1]
        table = self._source_table(b)
        table[_R_VEL : _R_VEL + 4] = s.vel.reshape(4, b)
        table[_R_REL : _R_REL + 16] = rel.reshape(16, b)
        pick = table[_R_PICK : _R_PICK + 10].reshape(2, 5, b)
        pick[:, :2] = rel[:, 1, 2:4].transpose(1, 0, 2)  # [landmark, (x, y), B]: the good agent's goal candidates
        table[_R_GOAL : _R_GOAL + 5] = np.where(s.goals[0].astype(bool), pick[1], pick[0])
        np.take(table, _OBS_ROWS, axis=0, out=out.reshape(-1, b), mode="clip")

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        to_goal = np.where(s.goals[0].astype(bool), dist[:, 3], dist[:, 2])  # [2, B]: |agent - goal landmark|
        rew = np.empty(to_goal.shape)
        np.subtract(to_goal[1], to_goal[0], out=rew[0])  # adversary: min over the one good agent, minus its own
        np.negative(to_goal[1], out=rew[1])  # good agent
        return rew

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
