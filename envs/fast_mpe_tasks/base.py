"""Shared pieces of the batched mpe2 scenarios: constants, the world state, the scenario base class and
the helpers every task uses (pairwise distances, collisions, observation blocks, the boundary penalty).

Everything is float64 and follows mpe2's operation order, so the port matches mpe2 bit for bit (see
:mod:`marl_stability.envs.fast_mpe` for the deliberate differences and the one documented tolerance). Arrays keep the
env axis *last* (``[..., B]``) so every numpy inner loop runs over B contiguous values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
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
    "AuxSpec",
    "WorldState",
    "Scenario",
    "landmark_index",
    "others_index",
    "put_pairs",
    "collisions",
    "boundary_penalty",
    "subtract_boundary_penalty",
    "sum_sq",
    "norm_like_linalg",
    "norm_by_ddot",
    "NORM_IS_ELEMENTWISE",
]

# mpe2 World / simple_env constants (core.py, simple_env.py).
DIM_P = 2
DT = 0.1
DAMPING = 0.25
CONTACT_FORCE = 1e2
CONTACT_MARGIN = 1e-3
SENSITIVITY = 5.0  # mpe2's action sensitivity when agent.accel is None
MOVE_DIM = 2 * DIM_P + 1  # [no_op, -x, +x, -y, +y]

# Scenario-specific state arrays: name -> (leading shape, dtype); the env axis is appended last.
AuxSpec = dict[str, tuple[tuple[int, ...], Any]]


@dataclass
class WorldState:
    """Batched mutable world state of B worlds, float64 like mpe2.

    Entities are agents first, then landmarks (mpe2's ``world.entities`` order). Landmarks are never
    moved by physics, so only agent velocities are stored (a scenario may teleport a landmark, e.g.
    collect_treasure's respawns). ``aux`` holds scenario-specific arrays (``Scenario.aux_spec``).
    """

    pos: np.ndarray  # [2, E, B] float64 (x/y, entity, env)
    vel: np.ndarray  # [2, N, B] float64
    comm: np.ndarray  # [N, dim_c, B] float64 (agent.state.c)
    goals: np.ndarray  # [G, B] int64 landmark indices (scenario specific)
    steps: np.ndarray  # [B] int64, world steps since the episode's reset
    cam_range0: np.ndarray  # [B] float64, mpe2's original_cam_range (render only)
    aux: dict[str, np.ndarray] = field(default_factory=dict)


def landmark_index(world: Any, landmark: Any) -> int:
    """Index of ``landmark`` in ``world.landmarks`` by identity (mpe2 stores objects)."""
    for i, lm in enumerate(world.landmarks):
        if lm is landmark:
            return i
    raise ValueError("goal is not one of the world's landmarks")


def others_index(n: int) -> np.ndarray:
    """[N, N-1] indices of the other agents, in world order (mpe2's ``others`` lists)."""
    return np.array([[j for j in range(n) if j != i] for i in range(n)], dtype=np.intp).reshape(n, n - 1)


def put_pairs(out: np.ndarray, rows: Any, col: int, xy: np.ndarray) -> int:
    """Write ``xy`` [2, R, K, B] as K interleaved (x, y) pairs into ``out[rows, col:col+2K]``; return the
    next free column (mpe2 concatenates 2-vectors, so x and y alternate)."""
    k = xy.shape[2]
    out[rows, col : col + 2 * k : 2] = xy[0]
    out[rows, col + 1 : col + 2 * k : 2] = xy[1]
    return col + 2 * k


def collisions(dist: np.ndarray, size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """mpe2's ``is_collision``: ``dist [A, K, B] < size_a + size_b`` (sizes [A] and [K])."""
    return dist < (size_a[:, None] + size_b[None, :])[:, :, None]


def boundary_penalty(x: np.ndarray) -> np.ndarray:
    """simple_tag / simple_world_comm ``bound(|coordinate|)``: 0 below 0.9, linear to 1, then
    ``min(exp(2x - 2), 10)`` (the exponent is capped at 3 first: exp(3) > 10, so the result is the same and
    exp never overflows)."""
    far = np.minimum(np.exp(np.minimum(2 * x - 2, 3.0)), 10)
    return np.where(x < 0.9, 0.0, np.where(x < 1.0, (x - 0.9) * 10, far))


def subtract_boundary_penalty(rew: np.ndarray, pos: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """mpe2's ``for p in range(2): rew -= weight * bound(abs(pos[p]))`` for ``pos`` [2, G, B] and ``rew`` [G, B].

    While every coordinate is below 0.9 each penalty is 0.0 and ``rew - 0.0`` is ``rew`` bit for bit, so the
    penalties are skipped (the common case; a NaN coordinate fails the test and takes the full path)."""
    x = np.abs(pos)
    if x.max() < 0.9:
        return rew
    for p in range(2):
        rew = rew - weight * boundary_penalty(x[p])
    return rew


def sum_sq(delta: np.ndarray) -> np.ndarray:
    """``np.sum(np.square(delta))`` over the first axis, in numpy's (sequential) order for short vectors."""
    sq = delta * delta
    total = sq[0]
    for i in range(1, sq.shape[0]):
        total = total + sq[i]
    return total


def norm_by_ddot(delta: np.ndarray) -> np.ndarray:
    """``sqrt(ddot(v, v))`` per 2-vector of ``delta`` ([2, ...]): a stacked ``matmul`` of [..., 1, 2] rows by
    [..., 2, 1] columns calls numpy's float64 ``dot`` (``cblas_ddot``, n = 2, unit strides) once per vector,
    the very call ``np.linalg.norm`` makes for one vector."""
    rows = np.ascontiguousarray(np.moveaxis(delta, 0, -1))  # [..., 2]: unit stride, as mpe2's 1-D vector
    return np.sqrt(np.matmul(rows[..., None, :], rows[..., :, None])[..., 0, 0])


def _ddot_rounds_each_product() -> bool:
    """Whether this process's BLAS ``ddot`` of a 2-vector rounds each product before the sum.

    Every non-fused kernel then gives exactly ``x0*x0 + x1*x1`` (two rounded products, one rounded sum, in
    any order). A kernel that fuses a multiply-add (OpenBLAS's AVX-512 SkylakeX/CooperLake ``ddot``) differs
    in the last bit on about 9 % of random vectors (360 of the 4096 probe vectors under SkylakeX), so it cannot
    agree on all of them. OpenBLAS picks its kernel once, when it loads, so one probe per process holds."""
    v = np.random.default_rng(0).standard_normal((2, 4096))
    sq = v * v
    return bool(np.array_equal(norm_by_ddot(v), np.sqrt(sq[0] + sq[1])))


# True on every CPU without an AVX-512 OpenBLAS kernel: the elementwise formula is then mpe2's norm, bit for bit.
NORM_IS_ELEMENTWISE = _ddot_rounds_each_product()


def norm_like_linalg(delta: np.ndarray) -> np.ndarray:
    """``np.linalg.norm`` of each 2-vector in ``delta`` ([2, ...], x/y first), bit for bit on every CPU.

    ``np.linalg.norm(v)`` is ``sqrt(v.dot(v))``, a BLAS ``ddot`` call whose last bit depends on the kernel
    OpenBLAS picked for the CPU (an AVX-512 kernel adds the last product with one fused multiply-add, the
    older ones round it first). Where this process's ``ddot`` rounds each product, the elementwise
    ``sqrt(dx*dx + dy*dy)`` has its exact bits at a fraction of the cost; elsewhere each vector goes through
    the same ``ddot`` (one BLAS call per vector: 5-8x the time of the formula for 16-4096 vectors). Use it only where mpe2 calls ``norm``.
    """
    if NORM_IS_ELEMENTWISE:
        sq = delta * delta
        return np.sqrt(sq[0] + sq[1])
    return norm_by_ddot(delta)


@dataclass
class Scenario:
    """Static description of one mpe2 scenario plus its batched reset, observation and reward maths.

    Physics properties follow mpe2's ``Entity``/``Agent`` fields: ``accel`` (the action sensitivity,
    5.0 when mpe2's is None), ``max_speed`` (``inf`` = None) and ``mass``.
    """

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
    accel: np.ndarray | None = None  # [N] float64, default SENSITIVITY
    max_speed: np.ndarray | None = None  # [N] float64, default inf (no limit)
    mass: np.ndarray | None = None  # [N] float64, default 1.0
    landmark_range: float = 1.0  # landmarks start uniform in [-r, r]^2
    # False: observations and rewards do not depend on positions (rel and dist are passed as None).
    uses_geometry: bool = True
    # False: positions matter but no agent-entity distance does (dist is passed as None; saves its sqrt).
    uses_distances: bool = True
    terminate_on_success: bool = False  # mpe2's option: end the episode (termination) on success

    def __post_init__(self) -> None:
        n = len(self.agent_names)
        if self.accel is None:
            self.accel = np.full(n, SENSITIVITY)
        if self.max_speed is None:
            self.max_speed = np.full(n, np.inf)
        if self.mass is None:
            self.mass = np.ones(n)

    @cached_property
    def n_agents(self) -> int:
        return len(self.agent_names)

    @cached_property
    def n_entities(self) -> int:
        return self.n_agents + self.n_landmarks

    def _others(self) -> np.ndarray:
        return others_index(self.n_agents)

    # ------------------------------------------------------------------ reset
    def aux_spec(self) -> AuxSpec:
        """Scenario-specific state arrays (none by default)."""
        return {}

    def sample_goals(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """[k, G] landmark indices drawn uniformly (mpe2 uses ``np_random.integers``)."""
        return rng.integers(0, self.n_landmarks, size=(k, self.n_goals), dtype=np.int64)

    def sample_start(self, rng: np.random.Generator, k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Initial positions [k, E, 2] (agents uniform in [-1, 1]^2, landmarks in [-r, r]^2) and the
        initial scenario-specific state (name -> [..., k], see :meth:`aux_spec`)."""
        r = self.landmark_range
        if r == 1.0:
            # One draw for every entity, env by env: the stream the port has always used for these tasks, so
            # a seed gives the runs (and the README's numbers) it gave before the port grew to every task.
            return rng.uniform(-1.0, 1.0, size=(k, self.n_agents + self.n_landmarks, 2)), {}
        agents = rng.uniform(-1.0, 1.0, size=(k, self.n_agents, 2))
        landmarks = rng.uniform(-r, r, size=(k, self.n_landmarks, 2))
        return np.concatenate([agents, landmarks], axis=1), {}

    def reset_envs(self, s: WorldState, idx: np.ndarray, rng: np.random.Generator) -> None:
        """Fresh initial states for envs ``idx`` (sorted, distinct; mpe2's distributions, the vector env's
        stream). Resetting every env (the usual autoreset: all episodes end together) writes through slices."""
        k = idx.size
        goals = self.sample_goals(rng, k)  # [k, G]
        pos, aux = self.sample_start(rng, k)
        sel = slice(None) if k == s.steps.shape[0] else idx
        s.goals[:, sel] = goals.T
        s.pos[:, :, sel] = pos.transpose(2, 1, 0)
        s.vel[:, :, sel] = 0.0
        s.comm[:, :, sel] = 0.0
        s.steps[sel] = 0
        # mpe2's original_cam_range: the largest |coordinate| of any entity, per env (a max: order-free, exact)
        s.cam_range0[sel] = np.maximum.reduce(np.abs(s.pos[:, :, sel]).reshape(-1, k), axis=0)
        for name, value in aux.items():
            s.aux[name][..., sel] = value

    # -------------------------------------------------------------- dynamics
    def post_step(self, s: WorldState, rng: np.random.Generator) -> None:
        """mpe2's ``Scenario.post_step`` (after physics, before rewards); a no-op by default."""

    # --------------------------------------------------------------- batched
    def observe(self, s: WorldState, rel: np.ndarray, dist: np.ndarray, out: np.ndarray) -> None:
        """Write observations into ``out`` [N, D, B] float32 (padding already zero).

        ``rel`` [2, N, E, B] is entity position minus agent position, ``dist`` [N, E, B] its length.
        """
        raise NotImplementedError

    def agent_rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        """[N, B] float64 per-agent rewards; ``dist`` [N, E, B] agent-entity distances."""
        raise NotImplementedError

    def global_reward(self, s: WorldState, dist: np.ndarray, agent_rew: np.ndarray) -> np.ndarray:
        """[B] float64 shared reward (only used when ``local_ratio`` is not None)."""
        raise NotImplementedError

    def rewards(self, s: WorldState, dist: np.ndarray) -> np.ndarray:
        """[N, B] final rewards: mpe2's ``global * (1 - local_ratio) + agent * local_ratio`` mix."""
        agent_rew = self.agent_rewards(s, dist)
        if self.local_ratio is None:
            return agent_rew
        g = self.global_reward(s, dist, agent_rew)
        lr = self.local_ratio
        return g * (1 - lr) + agent_rew * lr

    def terminal(self, s: WorldState, dist: np.ndarray) -> np.ndarray | None:
        """[B] mpe2's ``is_terminal`` after this step's rewards, or None when the task never terminates."""
        return None

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

    def aux_from_mpe(self, raw_env: Any) -> dict[str, np.ndarray]:
        """Scenario-specific state of an mpe2 env: name -> array without the env axis."""
        return {}

    def aux_to_mpe(self, raw_env: Any, aux: dict[str, np.ndarray]) -> None:
        """Write scenario-specific state (one env's slice) into an mpe2 env (rendering)."""
