"""simple_tag_v3: slower adversaries chase faster good agents around obstacles."""

from __future__ import annotations

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import (
    Scenario,
    WorldState,
    collisions,
    put_pairs,
    subtract_boundary_penalty,
)


class TagScenario(Scenario):
    """simple_tag_v3 (kwargs ``num_good``, ``num_adversaries``, ``num_obstacles``); adversaries first."""

    def __init__(self, num_good: int, num_adversaries: int, num_obstacles: int,
                 terminate_on_success: bool = False) -> None:
        g, a, o = num_good, num_adversaries, num_obstacles
        n = a + g
        adversary = np.arange(n) < a
        super().__init__(
            name="simple_tag_v3",
            agent_names=tuple(f"adversary_{i}" for i in range(a)) + tuple(f"agent_{i}" for i in range(g)),
            n_landmarks=o,
            dim_c=2,
            movable=np.ones(n, dtype=bool),
            silent=np.ones(n, dtype=bool),
            agent_size=np.where(adversary, 0.075, 0.05),
            agent_collide=np.ones(n, dtype=bool),
            landmark_size=np.full(o, 0.2),
            landmark_collide=np.ones(o, dtype=bool),
            landmark_colors=np.full((o, 3), 0.25),
            n_goals=0,
            local_ratio=None,
            obs_dims=tuple(4 + 2 * o + 2 * (n - 1) + 2 * (g - (0 if adv else 1)) for adv in adversary),
            accel=np.where(adversary, 3.0, 4.0),
            max_speed=np.where(adversary, 1.0, 1.3),
            landmark_range=0.9,
            terminate_on_success=terminate_on_success,
        )
        self.num_adversaries = a
        self._oth = self._others()
        self._rows = np.arange(n)[:, None]
        # Velocities of the *good* other agents, in world order.
        self._good_oth = [np.array([j for j in range(a, n) if j != i], dtype=np.intp) for i in range(n)]

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        n = self.n_agents
        # [self_vel, self_pos, landmark_rel, other_rel, good_other_vel]
        col = put_pairs(out, slice(None), 0, s.vel[:, :, None])
        col = put_pairs(out, slice(None), col, s.pos[:, :n, None])
        col = put_pairs(out, slice(None), col, rel[:, :, n:])
        col = put_pairs(out, slice(None), col, rel[:, self._rows, self._oth])
        a = self.num_adversaries
        if n - a > 0:  # adversaries see every good agent's velocity
            put_pairs(out, slice(0, a), col, s.vel[:, None, a:])  # [2, 1, G, B]: the assignment broadcasts over rows
        for i in range(a, n):  # a good agent sees the other good agents' velocities
            put_pairs(out, slice(i, i + 1), col, s.vel[:, None, self._good_oth[i]])

    def _caught(self, dist: np.ndarray) -> np.ndarray:
        """[G, A, B]: good agent a+g collides with adversary k."""
        a, n = self.num_adversaries, self.n_agents
        return collisions(dist[a:n, :a], self.agent_size[a:], self.agent_size[:a])

    def terminal(self, s: WorldState, dist: np.ndarray) -> np.ndarray | None:
        if not self.terminate_on_success:
            return None
        return self._caught(dist).any(axis=1).all(axis=0)  # every prey touches an adversary

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        a, n = self.num_adversaries, self.n_agents
        caught = self._caught(dist)
        good = np.zeros((n - a, dist.shape[2]))
        for k in range(a):  # rew -= 10 per adversary touching it, in adversary order
            good = good - np.where(caught[:, k], 10.0, 0.0)
        good = subtract_boundary_penalty(good, s.pos[:, a:n])
        hits = caught.sum(axis=(0, 1), dtype=np.float64)  # +10 per (good, adversary) pair, shared
        adversary = np.broadcast_to(hits * 10.0, (a, dist.shape[2]))
        return np.concatenate([adversary, good])
