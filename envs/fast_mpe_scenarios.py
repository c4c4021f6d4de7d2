"""Batched scenario definitions for :mod:`envs.fast_mpe` (spread, reference, speaker-listener).

Each scenario describes the static world (agents, landmarks, sizes, which
agents move / talk / collide), samples initial goals, and computes
observations and rewards for a whole batch of worlds at once. All arithmetic
is float64 and follows mpe2's operation order, so results match mpe2 to the
last bit in almost every case (see :mod:`envs.fast_mpe` for the differences).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DIM_P",
    "DT",
    "DAMPING",
    "CONTACT_FORCE",
    "CONTACT_MARGIN",
    "SENSITIVITY",
    "MOVE_DIM",
    "WorldState",
    "Scenario",
    "SpreadScenario",
    "ReferenceScenario",
    "SpeakerListenerScenario",
]

# mpe2 World / simple_env constants (core.py, simple_env.py).
DIM_P = 2
DT = 0.1
DAMPING = 0.25
CONTACT_FORCE = 1e2
CONTACT_MARGIN = 1e-3
SENSITIVITY = 5.0  # used when agent.accel is None, true for every agent here
MOVE_DIM = 2 * DIM_P + 1  # [no_op, -x, +x, -y, +y]


@dataclass
class WorldState:
    """Batched mutable world state of B worlds, float64 like mpe2.

    The env axis is *last* so every numpy inner loop runs over B contiguous
    values (a trailing axis of 2 would make each op loop over pairs).
    Entities are agents first, then landmarks (mpe2's ``world.entities``
    order). Landmarks never move here, so only agent velocities are stored.
    """

    pos: np.ndarray  # [2, E, B] float64 (x/y, entity, env)
    vel: np.ndarray  # [2, N, B] float64
    comm: np.ndarray  # [N, dim_c, B] float64 (agent.state.c)
    goals: np.ndarray  # [G, B] int64 landmark indices (scenario specific)
    steps: np.ndarray  # [B] int64, world steps since the episode's reset
    cam_range0: np.ndarray  # [B] float64, mpe2's original_cam_range (render only)


def _landmark_index(world: Any, landmark: Any) -> int:
    """Index of ``landmark`` in ``world.landmarks`` by identity (mpe2 stores objects)."""
    for i, lm in enumerate(world.landmarks):
        if lm is landmark:
            return i
    raise ValueError("goal is not one of the world's landmarks")


@dataclass
class Scenario:
    """Static description of one mpe2 scenario plus its batched obs/reward maths."""

    name: str
    agent_names: tuple[str, ...]
    n_landmarks: int
    dim_c: int
    movable: np.ndarray  # [N] bool
    silent: np.ndarray  # [N] bool
    agent_size: np.ndarray  # [N] float64
    agent_collide: np.ndarray  # [N] bool
    landmark_size: np.ndarray  # [L] float64
    landmark_collide: np.ndarray  # [L] bool
    landmark_colors: np.ndarray  # [L, 3] float64
    n_goals: int
    local_ratio: float | None
    obs_dims: tuple[int, ...] = field(default=())

    @property
    def n_agents(self) -> int:
        return len(self.agent_names)

    @property
    def n_entities(self) -> int:
        return self.n_agents + self.n_landmarks

    def _others(self) -> np.ndarray:
        """[N, N-1] indices of the other agents, in world order (mpe2's ``others`` lists)."""
        n = self.n_agents
        return np.array([[j for j in range(n) if j != i] for i in range(n)], dtype=np.intp).reshape(
            n, n - 1
        )

    # ---------------------------------------------------------------- batched
    def sample_goals(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """[k, G] landmark indices drawn uniformly (mpe2 uses ``np_random.integers``)."""
        return rng.integers(0, self.n_landmarks, size=(k, self.n_goals), dtype=np.int64)

    def observe(self, s: WorldState, rel: np.ndarray, out: np.ndarray) -> None:
        """Write observations into ``out`` [N, D, B] float32 (padding already zero).

        ``rel`` [2, N, E, B] is entity position minus agent position.
        """
        raise NotImplementedError

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        """[N, B] float64 per-agent rewards; ``dist`` [N, E, B] agent-entity distances."""
        raise NotImplementedError

    def global_reward(self, s: WorldState, dist: np.ndarray, agent_rew: np.ndarray) -> np.ndarray:
        """[B] float64 shared reward (only used when ``local_ratio`` is not None)."""
        raise NotImplementedError

    # ------------------------------------------------------------ mpe2 bridge
    def goals_from_mpe(self, world: Any) -> list[int]:
        """Goal landmark indices of an mpe2 world (inverse of :meth:`goals_to_mpe`)."""
        return []

    def goals_to_mpe(self, world: Any, goals: np.ndarray) -> None:
        """Set goal objects (and the goal-dependent colours) of an mpe2 world."""
        for agent in world.agents:
            agent.color = np.array([0.35, 0.35, 0.85])
        for lm, color in zip(world.landmarks, self.landmark_colors):
            lm.color = color.copy()


class SpreadScenario(Scenario):
    """simple_spread_v3: N agents cover N landmarks, penalised for collisions."""

    def __init__(self, n: int, local_ratio: float) -> None:
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
        )
        self._oth = self._others()
        self._rows = np.arange(n)[:, None]
        # is_collision threshold: size_a + size_b, summed exactly as mpe2 does.
        self._coll_dist = (self.agent_size[:, None] + self.agent_size[None, :])[:, :, None]
        self._offdiag = ~np.eye(n, dtype=bool)[:, :, None]

    def observe(self, s: WorldState, rel: np.ndarray, out: np.ndarray) -> None:
        n, l_, c = self.n_agents, self.n_landmarks, self.dim_c
        b = out.shape[2]
        # [self_vel, self_pos, landmark_rel, other_rel, other_comm], x/y interleaved.
        out[:, 0] = s.vel[0]
        out[:, 1] = s.vel[1]
        out[:, 2] = s.pos[0, :n]
        out[:, 3] = s.pos[1, :n]
        o = 4
        out[:, o : o + 2 * l_ : 2] = rel[0, :, n:]
        out[:, o + 1 : o + 2 * l_ : 2] = rel[1, :, n:]
        o += 2 * l_
        m = 2 * (n - 1)
        out[:, o : o + m : 2] = rel[0, self._rows, self._oth]
        out[:, o + 1 : o + m : 2] = rel[1, self._rows, self._oth]
        o += m
        out[:, o : o + c * (n - 1)] = s.comm[self._oth].reshape(n, c * (n - 1), b)

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        n = self.n_agents
        # -1 per other agent closer than size_a + size_b (all agents collide here).
        hits = (dist[:, :n] < self._coll_dist) & self._offdiag
        return -hits.sum(axis=1, dtype=np.float64)

    def global_reward(self, s: WorldState, dist: np.ndarray, agent_rew: np.ndarray) -> np.ndarray:
        mins = dist[:, self.n_agents :].min(axis=0)  # [L, B] closest agent per landmark
        # mpe2: rew = 0; rew -= min_l, in landmark order (kept for bit equality).
        g = -mins[0]
        for j in range(1, self.n_landmarks):
            g = g - mins[j]
        return g


class ReferenceScenario(Scenario):
    """simple_reference_v3: each agent tells the other which landmark to reach."""

    _COLORS = np.array([[0.75, 0.25, 0.25], [0.25, 0.75, 0.25], [0.25, 0.25, 0.75]])

    def __init__(self, local_ratio: float) -> None:
        super().__init__(
            name="simple_reference_v3",
            agent_names=("agent_0", "agent_1"),
            n_landmarks=3,
            dim_c=10,
            movable=np.ones(2, dtype=bool),
            silent=np.zeros(2, dtype=bool),
            agent_size=np.full(2, 0.05),
            agent_collide=np.zeros(2, dtype=bool),
            landmark_size=np.full(3, 0.05),
            landmark_collide=np.zeros(3, dtype=bool),
            landmark_colors=self._COLORS.copy(),
            n_goals=2,  # goals[:, i] = landmark that agent i wants the *other* agent at
            local_ratio=float(local_ratio),
            obs_dims=(21, 21),
        )
        self._oth = self._others()
        self._colors_t = np.ascontiguousarray(self.landmark_colors.T)  # [3, L]

    def observe(self, s: WorldState, rel: np.ndarray, out: np.ndarray) -> None:
        n = self.n_agents
        # [self_vel, landmark_rel, own goal_b colour, other comm], x/y interleaved.
        out[:, 0] = s.vel[0]
        out[:, 1] = s.vel[1]
        out[:, 2:8:2] = rel[0, :, n:]
        out[:, 3:8:2] = rel[1, :, n:]
        out[:, 8:11] = self._colors_t[:, s.goals].transpose(1, 0, 2)
        out[:, 11:21] = s.comm[self._oth[:, 0]]

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        # Agent i is rewarded by -|other agent - landmark goals[i]|.
        cols = np.arange(dist.shape[2])[None, :]
        idx = self.n_agents + s.goals  # [2, B] entity index of each goal_b
        return -dist[self._oth[:, 0][:, None], idx, cols]  # -dist[other(i), goal_i, b]

    def global_reward(self, s: WorldState, dist: np.ndarray, agent_rew: np.ndarray) -> np.ndarray:
        # mpe2: sum(generator) / len(agents); sum starts at int 0 (0 + r0 == r0).
        total = agent_rew[0]
        for i in range(1, self.n_agents):
            total = total + agent_rew[i]
        return total / self.n_agents

    def goals_from_mpe(self, world: Any) -> list[int]:
        for i, agent in enumerate(world.agents):
            if agent.goal_a is not world.agents[1 - i]:
                raise ValueError("reference goal_a must be the other agent")
        return [_landmark_index(world, a.goal_b) for a in world.agents]

    def goals_to_mpe(self, world: Any, goals: np.ndarray) -> None:
        for lm, color in zip(world.landmarks, self.landmark_colors):
            lm.color = color.copy()
        for i, agent in enumerate(world.agents):
            agent.goal_a = world.agents[1 - i]
            agent.goal_b = world.landmarks[int(goals[i])]
            agent.color = np.array([0.25, 0.25, 0.25])
        # mpe2 colours each agent like the landmark the *other* agent wants it at.
        for agent in world.agents:
            agent.goal_a.color = agent.goal_b.color


class SpeakerListenerScenario(Scenario):
    """simple_speaker_listener_v4: a static speaker guides a silent listener."""

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

    def observe(self, s: WorldState, rel: np.ndarray, out: np.ndarray) -> None:
        # speaker: [goal colour]; listener: [self_vel, landmark_rel, speaker comm]
        out[0, 0:3] = self._colors_t[:, s.goals[0]]
        out[1, 0] = s.vel[0, 1]
        out[1, 1] = s.vel[1, 1]
        out[1, 2:8:2] = rel[0, 1, 2:]
        out[1, 3:8:2] = rel[1, 1, 2:]
        out[1, 8:11] = s.comm[0]

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        # Squared distance (no sqrt) listener -> goal, shared by both agents.
        cols = np.arange(s.pos.shape[2])
        delta = s.pos[:, 1] - s.pos[:, 2 + s.goals[0], cols]  # [2, B]
        sq = delta * delta
        r = -(sq[0] + sq[1])
        return np.stack([r, r])

    def global_reward(self, s: WorldState, dist: np.ndarray, agent_rew: np.ndarray) -> np.ndarray:
        raise NotImplementedError("speaker_listener has no global reward")

    def goals_from_mpe(self, world: Any) -> list[int]:
        speaker, listener = world.agents
        if speaker.goal_a is not listener:
            raise ValueError("speaker goal_a must be the listener")
        return [_landmark_index(world, speaker.goal_b)]

    def goals_to_mpe(self, world: Any, goals: np.ndarray) -> None:
        speaker, listener = world.agents
        for lm, color in zip(world.landmarks, self.landmark_colors):
            lm.color = color.copy()
        speaker.goal_a, speaker.goal_b = listener, world.landmarks[int(goals[0])]
        listener.goal_a = listener.goal_b = None
        speaker.color = np.array([0.25, 0.25, 0.25])
        listener.color = speaker.goal_b.color + np.array([0.45, 0.45, 0.45])
