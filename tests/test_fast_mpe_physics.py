"""envs.fast_mpe_physics against a literal transcription of mpe2's ``World.step`` and ``_set_action``.

The lockstep tests (tests/test_fast_mpe_lockstep.py) compare every mpe2 task with mpe2 itself; these tests reach
the configurations no mpe2 task has: movers that are not a contiguous range of agents, static agents that
collide, agents that do not, colliding landmarks between them, masses other than 1, per-agent speed limits and
sensitivities, speakers that move. The comparison is bitwise (``tobytes``), signs of zeros included.
"""

from __future__ import annotations

import numpy as np
import pytest
from marl_stability.envs.fast_mpe import FastMPEVectorEnv, _spaces_for, _SpacesView
from marl_stability.envs.fast_mpe_physics import ActionDecoder, Physics
from marl_stability.envs.fast_mpe_tasks.base import (
    CONTACT_FORCE,
    CONTACT_MARGIN,
    DAMPING,
    DT,
    Scenario,
    WorldState,
)
from marl_stability.envs.registry import EnvError
from marl_stability.envs.vector import AgentLayout

# Exact numbers that depend on numpy/OpenBLAS arithmetic: .ci/blas_kernels.py reruns these under every
# OpenBLAS kernel the machine can run.
pytestmark = pytest.mark.cpu_sensitive

B = 7


def _scenario() -> Scenario:
    """4 agents (0, 2, 3 move; 1 is a static collider; 2 does not collide; 1 and 3 speak), 3 landmarks (0 and 2
    collide), masses, speed limits and sensitivities that differ per agent."""
    return Scenario(
        name="synthetic", agent_names=("a0", "a1", "a2", "a3"), n_landmarks=3, dim_c=3,
        movable=np.array([True, False, True, True]), silent=np.array([True, False, True, False]),
        agent_size=np.array([0.05, 0.1, 0.07, 0.15]), agent_collide=np.array([True, True, False, True]),
        landmark_size=np.array([0.2, 0.05, 0.12]), landmark_collide=np.array([True, False, True]),
        landmark_colors=np.zeros((3, 3)), n_goals=0, local_ratio=None, obs_dims=(1, 1, 1, 1),
        accel=np.array([5.0, 4.0, 3.0, 4.5]), max_speed=np.array([1.0, np.inf, np.inf, 0.3]),
        mass=np.array([1.0, 1.0, 2.5, 1.0]),
    )


def _state(rng: np.random.Generator, scn: Scenario) -> WorldState:
    e, n = scn.n_entities, scn.n_agents
    return WorldState(pos=rng.uniform(-0.25, 0.25, (2, e, B)), vel=rng.uniform(-2.0, 2.0, (2, n, B)),
                      comm=np.zeros((n, scn.dim_c, B)), goals=np.zeros((0, B), dtype=np.int64),
                      steps=np.zeros(B, dtype=np.int64), cam_range0=np.zeros(B))


def _mpe2_world_step(scn: Scenario, s: WorldState, u: np.ndarray, msg: np.ndarray | None) -> None:
    """mpe2's core.World.step, entity by entity as written there (vectorised over the B envs only)."""
    e = scn.n_entities
    movable = np.concatenate([scn.movable, np.zeros(scn.n_landmarks, dtype=bool)])
    collide = np.concatenate([scn.agent_collide, scn.landmark_collide])
    size = np.concatenate([scn.agent_size, scn.landmark_size])
    p_force: list = [None] * e
    for j, i in enumerate(np.flatnonzero(scn.movable)):
        p_force[i] = u[:, j].copy()  # + 0.0 noise
    for a in range(e):
        for b in range(a + 1, e):
            if not (collide[a] and collide[b]):
                continue
            delta = s.pos[:, a] - s.pos[:, b]
            dist = np.sqrt(np.square(delta)[0] + np.square(delta)[1])
            penetration = np.logaddexp(0, -(dist - (size[a] + size[b])) / CONTACT_MARGIN) * CONTACT_MARGIN
            force = CONTACT_FORCE * delta / dist * penetration
            for k, f in ((a, +force), (b, -force)):
                if movable[k]:
                    p_force[k] = f + (0.0 if p_force[k] is None else p_force[k])
    assert scn.mass is not None and scn.max_speed is not None
    for i in np.flatnonzero(scn.movable):
        s.pos[:, i] += s.vel[:, i] * DT
        s.vel[:, i] = s.vel[:, i] * (1 - DAMPING)
        s.vel[:, i] += (p_force[i] / scn.mass[i]) * DT
        if np.isfinite(scn.max_speed[i]):
            speed = np.sqrt(np.square(s.vel[0, i]) + np.square(s.vel[1, i]))
            capped = s.vel[:, i] / np.sqrt(np.square(s.vel[0, i]) + np.square(s.vel[1, i])) * scn.max_speed[i]
            s.vel[:, i] = np.where(speed > scn.max_speed[i], capped, s.vel[:, i])
    if msg is not None:
        s.comm[np.flatnonzero(~scn.silent)] = msg
    s.steps += 1


def test_physics_matches_mpe2_world_step_bit_for_bit() -> None:
    scn = _scenario()
    rng = np.random.default_rng(0)
    physics = Physics(scn, B)
    ours, theirs = _state(rng, scn), _state(rng, scn)
    theirs.pos, theirs.vel = ours.pos.copy(), ours.vel.copy()
    touching = 0
    for _ in range(30):
        u = rng.uniform(-5.0, 5.0, (2, 3, B))
        msg = rng.uniform(0.0, 1.0, (2, scn.dim_c, B))
        _mpe2_world_step(scn, theirs, u.copy(), msg)
        physics.step(ours, u, msg)
        for name in ("pos", "vel", "comm", "steps"):
            assert getattr(ours, name).tobytes() == getattr(theirs, name).tobytes(), name
        touching += int((np.hypot(*(ours.pos[:, 0] - ours.pos[:, 3])) < 0.2).sum())
    assert touching > 0  # agents 0 and 3 were in contact: the forces mattered
    assert np.isclose(np.hypot(*ours.vel[:, 3]), 0.3).any()  # agent 3's speed limit applied


def _layout(scn: Scenario, continuous: bool) -> AgentLayout:
    obs, act = _spaces_for(scn, continuous)
    return AgentLayout.from_env(_SpacesView(scn.agent_names, obs, act))  # type: ignore[arg-type]


def _mpe2_set_action(scn: Scenario, layout: AgentLayout, continuous: bool,
                     batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SyncVectorEnv + ClipOutOfBoundsWrapper + mpe2's _set_action, env by env: (u [2, Nmov, B], c [Ntalk, C, B])."""
    assert scn.accel is not None
    movers, talkers = np.flatnonzero(scn.movable), np.flatnonzero(~scn.silent)
    u, c = np.zeros((2, movers.size, B)), np.zeros((talkers.size, scn.dim_c, B))
    for b in range(B):
        for i in range(scn.n_agents):
            if continuous:
                a = np.clip(batch[b, i, : layout.act_dims[i]].astype(np.float32), 0.0, 1.0)
                move, rest = (a[:5], a[5:]) if scn.movable[i] else (None, a)
                if move is not None:
                    u[:, list(movers).index(i), b] = [move[2] - move[1], move[4] - move[3]]
                if not scn.silent[i]:
                    c[list(talkers).index(i), :, b] = rest
            else:
                k = int(np.argmax(batch[b, i, : layout.act_dims[i]]))
                move_k, word = (k % 5, k // 5) if scn.movable[i] else (None, k)
                if move_k is not None:
                    unit = {1: (-1.0, 0.0), 2: (1.0, 0.0), 3: (0.0, -1.0), 4: (0.0, 1.0)}.get(move_k, (0.0, 0.0))
                    u[:, list(movers).index(i), b] = unit
                if not scn.silent[i]:
                    c[list(talkers).index(i), word, b] = 1.0
    return u * scn.accel[movers][None, :, None], c


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "discrete"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_decoder_matches_mpe2_set_action_bit_for_bit(continuous: bool, dtype: type) -> None:
    scn = _scenario()
    layout = _layout(scn, continuous)
    decode = ActionDecoder(scn, layout, continuous, B)
    rng = np.random.default_rng(1)
    for _ in range(5):
        batch = rng.uniform(-0.3, 1.3, (B, scn.n_agents, layout.max_act_dim))
        if dtype is np.int64:
            batch = np.round(batch * 3)
        batch = batch.astype(dtype)
        u, msg = decode(batch)
        u_ref, c_ref = _mpe2_set_action(scn, layout, continuous, batch)
        assert u.tobytes() == u_ref.tobytes() and msg is not None and msg.tobytes() == c_ref.tobytes()


def test_load_state_rejects_goals_that_are_not_landmarks() -> None:
    env = FastMPEVectorEnv("simple_push_v3", {"continuous_actions": True}, 3, 0)
    env.reset()
    state = env.state_dict()
    for bad in (2, -1):
        broken = {**state, "goals": state["goals"].copy()}
        broken["goals"][1, 0] = bad
        with pytest.raises(EnvError, match="landmark indices"):
            env.load_state_dict(broken)
    env.load_state_dict(state)  # the untouched state still loads
