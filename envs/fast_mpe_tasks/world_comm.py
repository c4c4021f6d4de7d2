"""simple_world_comm_v3: simple_tag with food, forests that hide agents, and a leader who talks.

Agents: ``leadadversary_0`` (the only speaker, sees through forests), the other adversaries, then the good
agents. Landmarks: obstacles (collide), food, forests (in that order, mpe2's ``world.landmarks``).
"""

from __future__ import annotations

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import (
    Scenario,
    WorldState,
    collisions,
    put_pairs,
    subtract_boundary_penalty,
)


class WorldCommScenario(Scenario):
    """simple_world_comm_v3 (kwargs ``num_good``, ``num_adversaries``, ``num_obstacles``, ``num_food``,
    ``num_forests``)."""

    def __init__(self, num_good: int, num_adversaries: int, num_obstacles: int, num_food: int,
                 num_forests: int) -> None:
        g, a = num_good, num_adversaries
        n, lms = a + g, num_obstacles + num_food + num_forests
        adversary = np.arange(n) < a
        names = ["leadadversary_0"] + [f"adversary_{i}" for i in range(a - 1)] + [f"agent_{i}" for i in range(g)]
        colors = [[0.25] * 3] * num_obstacles + [[0.15, 0.15, 0.65]] * num_food + [[0.6, 0.9, 0.6]] * num_forests
        common = 4 + 2 * lms + 2 * (n - 1) + num_forests
        super().__init__(
            name="simple_world_comm_v3",
            agent_names=tuple(names),
            n_landmarks=lms,
            dim_c=4,
            movable=np.ones(n, dtype=bool),
            silent=np.arange(n) > 0,
            agent_size=np.where(adversary, 0.075, 0.045),
            agent_collide=np.ones(n, dtype=bool),
            landmark_size=np.array([0.2] * num_obstacles + [0.03] * num_food + [0.3] * num_forests),
            landmark_collide=np.array([True] * num_obstacles + [False] * (num_food + num_forests)),
            landmark_colors=np.array(colors, dtype=np.float64).reshape(lms, 3),
            n_goals=0,
            local_ratio=None,
            obs_dims=tuple(common + (2 * g + 4 if adv else 2 * (g - 1)) for adv in adversary),
            accel=np.where(adversary, 3.0, 4.0),
            max_speed=np.where(adversary, 1.0, 1.3),
            landmark_range=0.9,
        )
        self.num_adversaries = a
        self._food = slice(n + num_obstacles, n + num_obstacles + num_food)
        self._forest = slice(n + num_obstacles + num_food, n + lms)
        self._food_size = self.landmark_size[num_obstacles : num_obstacles + num_food]
        self._forest_size = self.landmark_size[num_obstacles + num_food :]
        self._oth = self._others()
        self._rows = np.arange(n)[:, None]
        self._leader = (np.arange(n) == 0)[:, None, None]
        self._good_oth = [np.array([j for j in range(a, n) if j != i], dtype=np.intp) for i in range(n)]

    def _visibility(self, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(in_forest [N, F, B], visible [N, N-1, B]): mpe2's forest rule for who sees whom."""
        inf = collisions(dist[:, self._forest], self.agent_size, self._forest_size)
        oth = inf[self._oth]  # [N, N-1, F, B]: is the other agent in forest f
        together = (inf[:, None] & oth).any(axis=2)  # both in one forest
        nobody_hidden = ~inf.any(axis=1)[:, None] & ~oth.any(axis=2)
        return inf, together | nobody_hidden | self._leader

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        n, a = self.n_agents, self.num_adversaries
        inf, visible = self._visibility(dist)
        other_rel = np.where(visible, rel[:, self._rows, self._oth], 0.0)  # hidden: [0, 0]
        col = put_pairs(out, slice(None), 0, s.vel[:, :, None])
        col = put_pairs(out, slice(None), col, s.pos[:, :n, None])
        col = put_pairs(out, slice(None), col, rel[:, :, n:])
        col = put_pairs(out, slice(None), col, other_rel)
        forest_flag = np.where(inf, 1.0, -1.0)  # [N, F, B]
        f = forest_flag.shape[1]
        for i in range(n):
            good = self._good_oth[i]
            seen = visible[i, good - (good > i)]  # position of each good other among i's others
            vel = np.where(seen, s.vel[:, good], 0.0)[:, None]  # [2, 1, G', B]
            if i < a:  # adversaries and leader: [..., other_vel, in_forest, leader comm]
                c = put_pairs(out, slice(i, i + 1), col, vel)
                out[i, c : c + f] = forest_flag[i]
                out[i, c + f : c + f + self.dim_c] = s.comm[0]
            else:  # good agents: [..., in_forest, other_vel]
                out[i, col : col + f] = forest_flag[i]
                put_pairs(out, slice(i, i + 1), col + f, vel)

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        a, n = self.num_adversaries, self.n_agents
        b = dist.shape[2]
        caught = collisions(dist[a:n, :a], self.agent_size[a:], self.agent_size[:a])  # [G, A, B]
        good = np.zeros((n - a, b))
        for k in range(a):  # rew -= 5 per adversary touching it
            good = good - np.where(caught[:, k], 5.0, 0.0)
        good = subtract_boundary_penalty(good, s.pos[:, a:n], 2)
        eats = collisions(dist[a:n, self._food], self.agent_size[a:], self._food_size)  # [G, food, B]
        for k in range(eats.shape[1]):
            good = good + np.where(eats[:, k], 2.0, 0.0)
        good = good - 0.05 * dist[a:n, self._food].min(axis=1)
        nearest_prey = dist[:a, a:n].min(axis=1)  # [A, B]
        hits = caught.sum(axis=(0, 1), dtype=np.float64)
        # rew = 0; rew -= 0.1 * nearest; then rew += 5 per (good, adversary) collision pair
        adversary = _add_repeatedly(-(0.1 * nearest_prey), 5.0, hits)
        return np.concatenate([adversary, good])


def _add_repeatedly(value: np.ndarray, step: float, count: np.ndarray) -> np.ndarray:
    """``value + step`` applied ``count`` times, one addition at a time (mpe2's ``rew += 5`` loop rounds
    after every addition, so a product ``count * step`` could differ in the last bit)."""
    out = value.copy()
    for k in range(int(count.max(initial=0))):
        out = np.where(count > k, out + step, out)
    return out
