"""simple_spread_v3: N agents cover N landmarks, penalised for collisions."""

from __future__ import annotations

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import Scenario, WorldState, put_pairs


class SpreadScenario(Scenario):
    """simple_spread_v3 (kwargs ``N``, ``local_ratio``)."""

    CAPTURE_RADIUS = 0.1  # mpe2's success test: every landmark has an agent closer than this

    def __init__(self, n: int, local_ratio: float, terminate_on_success: bool = False) -> None:
        super().__init__(
            name="simple_spread_v3",
            agent_names=tuple(f"agent_{i}" for i in range(n)),
            n_landmarks=n,
            dim_c=2,
            movable=np.ones(n, dtype=bool),
            silent=np.ones(n, dtype=bool),
            agent_size=np.full(n, 0.15),
            agent_collide=np.ones(n, dtype=bool),
            landmark_size=np.full(n, 0.05),
            landmark_collide=np.zeros(n, dtype=bool),
            landmark_colors=np.full((n, 3), 0.25),
            n_goals=0,
            local_ratio=float(local_ratio),
            obs_dims=(6 * n,) * n,
            terminate_on_success=terminate_on_success,
        )
        self._oth = self._others()
        self._rows = np.arange(n)[:, None]
        # is_collision threshold: size_a + size_b, summed exactly as mpe2 does.
        self._coll_dist = (self.agent_size[:, None] + self.agent_size[None, :])[:, :, None]
        self._offdiag = ~np.eye(n, dtype=bool)[:, :, None]

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        n, c = self.n_agents, self.dim_c
        b = out.shape[2]
        # [self_vel, self_pos, landmark_rel, other_rel, other_comm], x/y interleaved.
        col = put_pairs(out, slice(None), 0, s.vel[:, :, None])
        col = put_pairs(out, slice(None), col, s.pos[:, :n, None])
        col = put_pairs(out, slice(None), col, rel[:, :, n:])
        col = put_pairs(out, slice(None), col, rel[:, self._rows, self._oth])
        out[:, col : col + c * (n - 1)] = s.comm[self._oth].reshape(n, c * (n - 1), b)

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        n = self.n_agents
        # -1 per other agent closer than size_a + size_b (all agents collide here).
        hits = (dist[:, :n] < self._coll_dist) & self._offdiag
        return -hits.sum(axis=1, dtype=np.float64)

    def terminal(self, s: WorldState, dist: np.ndarray) -> np.ndarray | None:
        if not self.terminate_on_success:
            return None
        return (dist[:, self.n_agents :].min(axis=0) < self.CAPTURE_RADIUS).all(axis=0)

    def global_reward(self, s: WorldState, dist: np.ndarray, agent_rew: np.ndarray) -> np.ndarray:
        mins = dist[:, self.n_agents :].min(axis=0)  # [L, B] closest agent per landmark
        # mpe2: rew = 0; rew -= min_l, in landmark order (kept for bit equality).
        g = -mins[0]
        for j in range(1, self.n_landmarks):
            g = g - mins[j]
        return g
