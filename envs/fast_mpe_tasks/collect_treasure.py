"""collect_treasure_v1: collectors pick up typed treasures and deliver them to the deposit of that type.

Agents: collectors, then deposits (all "ghosts": no contact forces). Landmarks: treasures. State beyond
positions (``aux``): ``alive`` and ``ttype`` per treasure, ``holding`` per collector (-1 = nothing) and
``bonus``, the shared pickup + delivery reward of the last step. A picked-up treasure moves to
(-999, -999) and respawns on the next step (mpe2's ``respawn_prob`` is 1.0) at a position and type drawn
from the vector env's generator (:meth:`CollectTreasureScenario.draw_respawns`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import (
    AuxSpec,
    Scenario,
    WorldState,
    norm_like_linalg,
    others_index,
)

_BOUND = 0.95  # treasures are placed uniformly in [-0.95, 0.95]^2
_DEAD_KEY = 1e6  # mpe2 sorts dead treasures last with this distance


class CollectTreasureScenario(Scenario):
    """collect_treasure_v1 (kwargs ``num_collectors``, ``num_deposits``, ``num_treasures``)."""

    def __init__(self, num_collectors: int, num_deposits: int, num_treasures: int) -> None:
        c, d, t = num_collectors, num_deposits, num_treasures
        n = c + d
        collector = np.arange(n) < c
        block = (n - 1) * (4 + 2 * d) + t * (2 + d)
        super().__init__(
            name="collect_treasure_v1",
            agent_names=tuple(f"collector_{i}" for i in range(c)) + tuple(f"deposit_{i}" for i in range(d)),
            n_landmarks=t,
            dim_c=2,
            movable=np.ones(n, dtype=bool),
            silent=np.ones(n, dtype=bool),
            agent_size=np.where(collector, 0.05, 0.075),
            agent_collide=np.zeros(n, dtype=bool),
            landmark_size=np.full(t, 0.025),
            landmark_collide=np.zeros(t, dtype=bool),
            landmark_colors=np.zeros((t, 3)),  # by type; rendering takes mpe2's palette
            n_goals=0,
            local_ratio=None,
            obs_dims=tuple(4 + (d if is_c else 0) + block for is_c in collector),
            accel=np.full(n, 1.5),
            max_speed=np.full(n, 1.0),
            mass=np.where(collector, 1.0, 2.25),
            landmark_range=_BOUND,
        )
        self.num_collectors, self.num_deposits = c, d
        self._oth = others_index(n)
        self._rows3 = np.arange(n)[:, None, None]
        self._enc_template: np.ndarray | None = None  # [2D, N, B] agent encodings without the held types
        self._types = np.arange(d)[:, None, None]
        # Encoding of every agent seen by others: collectors [0 | holding], deposits [own type | 0].
        self._deposit_enc = np.concatenate([np.eye(d), np.zeros((d, d))], axis=1)  # [D, 2D]

    def aux_spec(self) -> AuxSpec:
        t, c = self.n_landmarks, self.num_collectors
        return {"alive": ((t,), np.bool_), "ttype": ((t,), np.int64), "holding": ((c,), np.int64),
                "bonus": ((), np.float64)}

    def sample_start(self, rng: np.random.Generator, k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        agents = rng.uniform(-1.0, 1.0, size=(k, self.n_agents, 2))
        treasures = rng.uniform(-_BOUND, _BOUND, size=(k, self.n_landmarks, 2))
        aux = {"alive": np.ones((self.n_landmarks, k), dtype=bool),
               "ttype": rng.integers(0, self.num_deposits, size=(self.n_landmarks, k), dtype=np.int64),
               "holding": np.full((self.num_collectors, k), -1, dtype=np.int64), "bonus": np.zeros(k)}
        return np.concatenate([agents, treasures], axis=1), aux

    def draw_respawns(self, rng: np.random.Generator, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New (positions [2, T, B], types [T, B]) for the treasures marked ``dead`` [T, B] (other
        entries are unused). Drawn in (treasure, env) order."""
        m = int(dead.sum())
        pos = np.zeros((2,) + dead.shape)
        types = np.zeros(dead.shape, dtype=np.int64)
        pos[:, dead] = rng.uniform(-_BOUND, _BOUND, size=(m, 2)).T
        types[dead] = rng.integers(0, self.num_deposits, size=m)
        return pos, types

    def post_step(self, s: WorldState, rng: np.random.Generator) -> None:
        """mpe2's pickup / respawn / delivery pass, then the shared bonus (+5 per pickup and delivery)."""
        c, n = self.num_collectors, self.n_agents
        alive, ttype, holding = s.aux["alive"], s.aux["ttype"], s.aux["holding"]
        b = alive.shape[1]
        dead = ~alive
        bonus = np.zeros(b)
        reach = self.landmark_size[0] + self.agent_size[0]  # lm.size + collector.size
        for t in range(self.n_landmarks):  # pickups, in landmark order (holding changes as we go)
            delta = s.pos[:, n + t, None] - s.pos[:, :c]  # [2, C, B] treasure - collector
            sq = delta * delta
            hit = (holding < 0) & (np.sqrt(sq[0] + sq[1]) < reach) & alive[t]
            got = hit.any(axis=0)
            envs = np.flatnonzero(got)
            holding[np.argmax(hit, axis=0)[envs], envs] = ttype[t, envs]
            alive[t, envs] = False
            s.pos[:, n + t, envs] = -999.0
            bonus = bonus + np.where(got, 5.0, 0.0)
        if dead.any():  # treasures dead before this step respawn (respawn_prob 1.0)
            pos, types = self.draw_respawns(rng, dead)
            s.pos[:, n:] = np.where(dead, pos, s.pos[:, n:])
            ttype[dead] = types[dead]
            alive[dead] = True
        cols = np.arange(b)
        target = c + np.maximum(holding, 0)  # the deposit of the held type
        delta = s.pos[:, np.arange(c)[:, None], cols] - s.pos[:, target, cols]  # collector - deposit
        sq = delta * delta
        delivered = (holding >= 0) & (np.sqrt(sq[0] + sq[1]) < self.agent_size[0] + self.agent_size[c])
        for k in range(c):
            bonus = bonus + np.where(delivered[k], 5.0, 0.0)
        holding[delivered] = -1
        s.aux["bonus"][:] = bonus

    # ------------------------------------------------------------ observation
    def _encodings(self, s: WorldState) -> np.ndarray:
        """[2D, N, B]: what others see of each agent (mpe2's ``_get_agent_encoding``)."""
        d, c = self.num_deposits, self.num_collectors
        b = s.pos.shape[2]
        if self._enc_template is None or self._enc_template.shape[2] != b:
            template = np.zeros((2 * d, c + d, b))  # collectors: zeros then the one-hot of the held type
            template[:, c:] = self._deposit_enc.T[:, :, None]  # deposits: their fixed encoding
            self._enc_template = template
        enc = self._enc_template.copy()
        enc[d:, :c] = s.aux["holding"][None] == self._types  # [D, C, B]
        return enc

    def _sorted_others(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, view: np.ndarray) -> None:
        """Write every other agent (closest first, stable sort like ``sorted``) into ``view``
        [N, N-1, 4 + 2D, B]: relative position, velocity, encoding."""
        n, b = self.n_agents, dist.shape[2]
        key = dist[np.arange(n)[:, None], self._oth]  # [N, N-1, B]
        order = np.argsort(key, axis=1, kind="stable")
        other = self._oth[self._rows3, order]  # [N, N-1, B]: the other agent in each sorted slot
        flat = other * b + np.arange(b)  # [N, N-1, B] index into a flattened [N, B] array
        observer = (np.arange(n) * (n + self.n_landmarks) * b)[:, None, None]
        view[:, :, 0:2] = np.take(rel.reshape(2, -1), observer + flat, axis=1).transpose(1, 2, 0, 3)
        view[:, :, 2:4] = np.take(s.vel.reshape(2, -1), flat, axis=1).transpose(1, 2, 0, 3)
        enc = self._encodings(s)
        view[:, :, 4:] = np.take(enc.reshape(enc.shape[0], -1), flat, axis=1).transpose(1, 2, 0, 3)

    def _sorted_treasures(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, view: np.ndarray) -> None:
        """Write the treasures into ``view`` [N, T, 2 + D, B]: alive ones closest first, dead ones as zeros."""
        n, b = self.n_agents, dist.shape[2]
        alive = s.aux["alive"]
        key = np.where(alive[None], dist[:, n:], _DEAD_KEY)  # [N, T, B]
        order = np.argsort(key, axis=1, kind="stable")
        flat = order * b + np.arange(b)  # into a flattened [T, B] array
        seen = np.take(alive, flat)  # [N, T, B]
        observer = (np.arange(n) * (n + self.n_landmarks) * b + n * b)[:, None, None]
        pos = np.take(rel.reshape(2, -1), observer + flat, axis=1)  # [2, N, T, B]
        view[:, :, 0:2] = np.where(seen, pos, 0.0).transpose(1, 2, 0, 3)
        kind = (np.take(s.aux["ttype"], flat)[None] == self._types[:, :, :, None]) & seen  # [D, N, T, B]
        view[:, :, 2:] = kind.transpose(1, 2, 0, 3)

    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        c, d, n, t = self.num_collectors, self.num_deposits, self.n_agents, self.n_landmarks
        b = out.shape[2]
        # [pos, vel, (collectors: holding one-hot), others sorted, treasures sorted]
        out[:, 0:2] = s.pos[:, :n].transpose(1, 0, 2)
        out[:, 2:4] = s.vel.transpose(1, 0, 2)
        out[:c, 4 : 4 + d] = (s.aux["holding"][:, None] == np.arange(d)[None, :, None])
        f_other, f_treasure = 4 + 2 * d, 2 + d
        # Build the sorted blocks once for every agent, then copy them after each row's prefix.
        others = np.empty((n, n - 1, f_other, b), dtype=np.float32)
        treasures = np.empty((n, t, f_treasure, b), dtype=np.float32)
        self._sorted_others(s, rel, dist, others)
        self._sorted_treasures(s, rel, dist, treasures)
        width_o, width_t = (n - 1) * f_other, t * f_treasure
        for rows, col in ((slice(0, c), 4 + d), (slice(c, n), 4)):
            out[rows, col : col + width_o] = others[rows].reshape(-1, width_o, b)
            out[rows, col + width_o : col + width_o + width_t] = treasures[rows].reshape(-1, width_t, b)

    # ---------------------------------------------------------------- rewards
    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        c, n = self.num_collectors, self.n_agents
        alive, holding, bonus = s.aux["alive"], s.aux["holding"], s.aux["bonus"]
        b = dist.shape[2]
        cols = np.arange(b)
        coll = np.zeros((c, b))
        touch = dist[:c, :c] < (self.agent_size[0] + self.agent_size[0])  # collector overlaps
        for k in range(c):  # rew -= 5 per other collector it overlaps, in collector order
            hit = touch[:, k] & (np.arange(c) != k)[:, None]
            coll = coll - np.where(hit, 5.0, 0.0)
        nearest = np.where(alive[None], dist[:c, n:], np.inf).min(axis=1)  # [C, B]
        to_deposit = dist[np.arange(c)[:, None], c + np.maximum(holding, 0), cols]
        shaping = np.where(holding < 0, nearest, to_deposit)
        coll = np.where(np.isfinite(shaping), coll - 0.1 * shaping, coll) + bonus
        deps = [self._deposit_reward(s, dist, j) for j in range(self.num_deposits)]
        return np.concatenate([coll, np.stack(deps) + bonus])

    def _deposit_reward(self, s: WorldState, dist: np.ndarray, j: int) -> np.ndarray:
        """[B] reward of deposit ``j`` without the bonus: nearest carrier of its type, else the centroid."""
        c = self.num_collectors
        carrying = s.aux["holding"] == j  # [C, B]
        nearest = np.where(carrying, dist[c + j, :c], np.inf).min(axis=0)
        total = s.pos[:, 0]
        for k in range(1, c):  # np.mean(..., axis=0) adds the rows in order
            total = total + s.pos[:, k]
        to_centroid = norm_like_linalg(total / c - s.pos[:, c + j])  # mpe2: np.linalg.norm(centroid - p)
        return np.where(carrying.any(axis=0), 0.0 - 0.1 * nearest, 0.0 - 0.1 * to_centroid)

    # ------------------------------------------------------------ mpe2 bridge
    def aux_from_mpe(self, raw_env: Any) -> dict[str, np.ndarray]:
        world = raw_env.world
        collectors = world.agents[: self.num_collectors]
        return {"alive": np.array([lm.alive for lm in world.landmarks], dtype=bool),
                "ttype": np.array([lm.type for lm in world.landmarks], dtype=np.int64),
                "holding": np.array([-1 if a.holding is None else a.holding for a in collectors], dtype=np.int64),
                "bonus": np.zeros(())}

    def aux_to_mpe(self, raw_env: Any, aux: dict[str, np.ndarray]) -> None:
        world = raw_env.world
        for lm, alive, kind in zip(world.landmarks, aux["alive"], aux["ttype"]):
            lm.alive, lm.type = bool(alive), int(kind)
            lm.color = world.treasure_colors[int(kind)].copy()
        for agent, held in zip(world.agents, aux["holding"]):
            agent.holding = None if held < 0 else int(held)
            agent.color = np.array([0.85, 0.85, 0.85]) if held < 0 else 0.85 * world.treasure_colors[int(held)]

    def goals_to_mpe(self, world: Any, goals: np.ndarray) -> None:
        """Colours depend on the treasure state: set in :meth:`aux_to_mpe`."""
