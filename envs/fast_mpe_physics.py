"""The per-step maths of :class:`marl_stability.envs.fast_mpe.FastMPEVectorEnv` that every task shares: action decoding and
mpe2's ``World.step`` (contact forces, integration, speed limits, communication state).

At B = 256 a step is a few dozen numpy calls on small arrays, so their number and the operands' memory layout
set the cost, not the arithmetic. Both classes therefore precompute every index once, keep the env axis last,
gather with row ``take``s from contiguous ``[rows, B]`` views instead of fancy indexing, keep operands
contiguous (an operand with a gap between its x and y planes, or a transposed one, sends numpy's ufuncs through
their buffered, copying path) and write into buffers allocated once per vector env (``out=``).

Every result is bit-identical to mpe2's formulation (tests/test_fast_mpe_physics.py compares with a literal
transcription of mpe2's ``World.step`` and ``_set_action``; tests/test_fast_mpe_lockstep.py with mpe2 itself).
The rewrites that are not the same operations on the same operands are exact: ``(m - d) / k`` for
``-(d - m) / k`` and ``-f`` for ``f * -1.0`` (IEEE negation and subtraction are sign-symmetric), the float32
difference written into a float64 buffer (the loop is chosen by the float32 inputs), in-place accumulation in
mpe2's order, and discrete actions masked by adding 0 or -inf instead of ``where`` (argmax sees the same
values).
"""

from __future__ import annotations

import numpy as np
from marl_stability.envs.fast_mpe_tasks.base import (
    CONTACT_FORCE,
    CONTACT_MARGIN,
    DAMPING,
    DT,
    MOVE_DIM,
    Scenario,
    WorldState,
)
from marl_stability.envs.vector import AgentLayout

__all__ = ["ActionDecoder", "Physics", "as_slice"]

# Discrete movement index -> unit force (mpe2: u[axis] = +-1.0, then u *= the agent's sensitivity).
_MOVE_TABLE_T = np.array([[0.0, -1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0, 1.0]])
_KEEP = 1 - DAMPING  # mpe2: p_vel * (1 - damping); 0.75 exactly


def as_slice(idx: np.ndarray) -> slice | np.ndarray:
    """A slice when ``idx`` is contiguous (basic indexing avoids copies), else the array."""
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        return slice(int(idx[0]), int(idx[0]) + int(idx.size))
    return idx


class ActionDecoder:
    """Action batches ``[B, N, max_act_dim]`` -> (move force u ``[2, Nmov, B]`` float64, messages ``[Ntalk,
    dim_c, B]`` float64 or None without speakers), like SyncVectorEnv + mpe2's ``_set_action``.

    The returned u is this decoder's buffer, overwritten by the next call (the physics adds the contact forces
    to it in place); the messages are a fresh array."""

    def __init__(self, scn: Scenario, layout: AgentLayout, continuous: bool, num_envs: int) -> None:
        assert scn.accel is not None
        self.continuous = continuous
        mov = np.flatnonzero(scn.movable)
        self._mov = as_slice(mov)
        self._all_move = mov.size == scn.n_agents  # every agent moves: no agent selection needed
        self._talk = np.flatnonzero(~scn.silent)
        # Columns holding each speaking agent's message: after the 5 move entries if it moves.
        offs = np.where(scn.movable[self._talk], MOVE_DIM, 0)
        self._talk_cols = offs[:, None] + np.arange(scn.dim_c)[None, :]
        self._talk_rows = self._talk[:, None]
        self._talk_moves = scn.movable[self._talk][:, None]
        self._eye_c = np.eye(scn.dim_c)
        b, n, a = num_envs, scn.n_agents, layout.max_act_dim
        # The Box bounds broadcast to the batch once, so clipping runs over contiguous arrays.
        self._low = np.ascontiguousarray(np.broadcast_to(layout.act_low.astype(np.float32), (b, n, a)))
        self._high = np.ascontiguousarray(np.broadcast_to(layout.act_high.astype(np.float32), (b, n, a)))
        self._clipped = np.empty((b, n, a), dtype=np.float32)
        self._u = np.empty((2, mov.size, b))
        self._accel = np.ascontiguousarray(np.broadcast_to(scn.accel[mov][None, :, None], (2, mov.size, b)))
        # Discrete: argmax over the first act_dim entries only: padding + -inf is -inf, a valid entry + 0.0 keeps
        # its value (only a zero's sign can change, which no comparison sees); skipped when nothing is padding.
        valid = np.arange(a)[None, :] < np.array(layout.act_dims)[:, None]
        self._all_valid = bool(valid.all())
        pad = np.where(valid, np.float32(0.0), np.float32(-np.inf))
        self._pad = np.ascontiguousarray(np.broadcast_to(pad, (b, n, a)))
        # Movable speakers encode move + MOVE_DIM * message; without them the move index is the action.
        self._talk_moves_any = bool(self._talk_moves.any())

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.continuous:
            return self._continuous(batch)
        return self._discrete(batch)

    def _continuous(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        # Cast to the Box dtype and clip, like SyncVectorEnv + ClipOutOfBoundsWrapper.
        # (minimum/maximum == np.clip for the finite actions check_action_batch lets through)
        a = np.maximum(batch.astype(np.float32, copy=False), self._low, out=self._clipped)
        np.minimum(a, self._high, out=a)
        am = (a if self._all_move else a[:, self._mov, :MOVE_DIM]).transpose(2, 1, 0)  # [>=5, Nmov, B]
        # mpe2: u[0] += a[2] - a[1]; u[1] += a[4] - a[3]: the difference is taken in float32 (the loop is chosen
        # by the float32 inputs; the float64 output only receives the rounded difference), then * sensitivity.
        u = np.subtract(am[2:5:2], am[1:4:2], out=self._u)
        np.multiply(u, self._accel, out=u)
        if not self._talk.size:
            return u, None  # no speaker (an empty fancy index would still cost a numpy call)
        msg = a[:, self._talk_rows, self._talk_cols].transpose(1, 2, 0).astype(np.float64)
        return u, msg

    def _discrete(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        masked = batch if self._all_valid else np.add(batch, self._pad)
        k = np.argmax(masked, axis=2).T  # [N, B], first max like np.argmax per agent
        km = k if self._all_move else k[self._mov]
        if self._talk_moves_any:
            km = km % MOVE_DIM
        u = np.take(_MOVE_TABLE_T, km, axis=1, out=self._u, mode="clip")  # [2, Nmov, B] unit forces
        np.multiply(u, self._accel, out=u)
        if not self._talk.size:
            return u, None
        kt = k[self._talk]
        words = np.where(self._talk_moves, kt // MOVE_DIM, kt)
        return u, self._eye_c[:, words].transpose(1, 0, 2)


def _partner_order(
    coll_mov: np.ndarray, n_coll: int, ia: np.ndarray, ib: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each colliding movable agent (collider index ``coll_mov``), the index of its pairs (a < b:
    ``ia``, ``ib``) in increasing partner order, the order in which mpe2's pair loop adds their forces to
    it, and the sign of the pair force it gets (+1 as a, -1 as b): ``[M, C-1]`` and ``[M, C-1, 1]``."""
    pair_of = {(int(a), int(b)): p for p, (a, b) in enumerate(zip(ia, ib))}
    partners = [[j for j in range(n_coll) if j != i] for i in coll_mov]
    pairs = np.array(
        [[pair_of[(min(i, j), max(i, j))] for j in js] for i, js in zip(coll_mov, partners)], dtype=np.intp
    ).reshape(coll_mov.size, max(n_coll - 1, 0))
    signs = np.array([[1.0 if i < j else -1.0 for j in js] for i, js in zip(coll_mov, partners)])
    return pairs, signs.reshape(pairs.shape)[:, :, None]


class Physics:
    """mpe2's ``World.step`` for B worlds: contact forces between colliding entities, integration of the
    movable agents (damping, mass, speed limit) and the speakers' communication state."""

    def __init__(self, scn: Scenario, num_envs: int) -> None:
        assert scn.accel is not None and scn.max_speed is not None and scn.mass is not None
        b, mov = num_envs, scn.movable
        mov_idx = np.flatnonzero(mov)
        self._mov = as_slice(mov_idx)
        self._n_mov = int(mov_idx.size)
        self._talk = np.flatnonzero(~scn.silent)
        self._tmp = np.empty((2, mov_idx.size, b))
        # mpe2 divides the force by the mass; x / 1.0 == x, so only other masses cost a division.
        self._mass = None if np.all(scn.mass[mov] == 1.0) else scn.mass[mov][None, :, None]
        limited = np.flatnonzero(np.isfinite(scn.max_speed) & mov)
        self._speed_rows = as_slice(limited)
        self._max_speed = scn.max_speed[limited][:, None]  # [K, 1]
        self._has_speed_limit = limited.size > 0
        self._init_contacts(scn, b, mov_idx)

    def _init_contacts(self, scn: Scenario, b: int, mov_idx: np.ndarray) -> None:
        """Index tables and buffers of the contact forces. Every gather is a row ``take`` from a contiguous
        ``[rows, B]`` view and every operand is contiguous: an operand with a gap between its x and y planes
        sends numpy's ufuncs through their buffered (copying) path."""
        e = scn.n_entities
        collide = np.concatenate([scn.agent_collide, scn.landmark_collide])
        coll = np.flatnonzero(collide)  # colliding entities
        n_coll = int(coll.size)
        movable_ent = np.concatenate([scn.movable, np.zeros(scn.n_landmarks, dtype=bool)])
        coll_mov = np.flatnonzero(movable_ent[coll])  # positions of the movable ones within the colliders
        # Position of each colliding movable agent within the movable-agent force array.
        self._coll_mov_force = as_slice(np.searchsorted(mov_idx, coll[coll_mov]))
        # Unordered collider pairs (a < b): mpe2 computes each pair's force once.
        ia, ib = np.triu_indices(n_coll, k=1)
        p, m = int(ia.size), int(coll_mov.size)
        self._has_collisions = p > 0 and m > 0
        # Rows of pos.reshape(2E, B) holding (x of every pair's a, y of every pair's a), and the same for b; or,
        # when both ends are ranges of entities (one pair: two colliders), the two slices.
        self._rows_a = np.concatenate([coll[ia], e + coll[ia]])
        self._rows_b = np.concatenate([coll[ib], e + coll[ib]])
        end_a, end_b = as_slice(coll[ia]), as_slice(coll[ib])
        self._ends = (end_a, end_b) if isinstance(end_a, slice) and isinstance(end_b, slice) else None
        sizes = np.concatenate([scn.agent_size, scn.landmark_size])[coll]
        self._pair_dist_min = (sizes[ia] + sizes[ib])[:, None]
        pairs, signs = _partner_order(coll_mov, n_coll, ia, ib)  # [M, C-1], [M, C-1, 1]
        # Each mover's signed pair force per partner slot k, as rows of the [+f; -f] table ([sign, x/y, P, B]
        # flattened): row = (0 for +f, 1 for -f) * 2P + axis * P + pair, laid out [C-1, 2, M].
        neg = (signs[:, :, 0] < 0).T.astype(np.intp)  # [C-1, M]
        self._signed_rows = (neg[:, None, :] * 2 * p + np.arange(2)[None, :, None] * p + pairs.T[:, None, :])
        self._pa, self._pb = np.empty((2 * p, b)), np.empty((2 * p, b))
        self._delta = np.empty((2, p, b))
        self._dist, self._pen = np.empty((p, b)), np.empty((p, b))
        self._pm_f = np.empty((2, 2, p, b))  # [+f, -f]
        self._pm_rows = self._pm_f.reshape(4 * p, b)
        self._signed = np.empty((max(n_coll - 1, 0), 2, m, b))

    def _contact_forces(self, pos: np.ndarray) -> np.ndarray:
        """[2, P, B] force on collider a of each pair (a < b; b gets -f), mpe2's ``get_collision_force``."""
        delta, dist, pen, f = self._delta, self._dist, self._pen, self._pm_f[0]
        if self._ends is not None:
            np.subtract(pos[:, self._ends[0]], pos[:, self._ends[1]], out=delta)  # p_a - p_b
        else:
            pos_rows = pos.reshape(-1, pos.shape[-1])  # [2E, B] (a view of the contiguous state)
            pa = np.take(pos_rows, self._rows_a, axis=0, out=self._pa, mode="clip")
            pb = np.take(pos_rows, self._rows_b, axis=0, out=self._pb, mode="clip")
            np.subtract(pa, pb, out=delta.reshape(pa.shape))  # p_a - p_b
        np.multiply(delta, delta, out=f)
        np.add(f[0], f[1], out=dist)  # mpe2 sums x^2 + y^2 in this order
        np.sqrt(dist, out=dist)
        k = CONTACT_MARGIN
        # mpe2: logaddexp(0, -(dist - dist_min) / k) * k. (dist_min - dist) is -(dist - dist_min) exactly (IEEE
        # subtraction is sign-symmetric); only a zero's sign can differ, and logaddexp(0, +-0) is log 2 either way.
        np.subtract(self._pair_dist_min, dist, out=pen)
        np.divide(pen, k, out=pen)
        np.logaddexp(0.0, pen, out=pen)
        np.multiply(pen, k, out=pen)
        np.multiply(delta, CONTACT_FORCE, out=f)  # CONTACT_FORCE * delta / dist * pen, left to right
        np.divide(f, dist, out=f)
        np.multiply(f, pen, out=f)
        return f

    def _add_contacts(self, pos: np.ndarray, force: np.ndarray) -> None:
        """Add every contact force to ``force`` [2, Nmov, B] in place, in mpe2's order."""
        f = self._contact_forces(pos)
        np.negative(f, out=self._pm_f[1])  # -f == f * -1.0 exactly
        # mpe2 loops over pairs (a<b) adding f_a = +f to a and f_b = -f to b, p_force = f + p_force: for agent i
        # that adds its partners' forces in increasing partner order, as here. One gather makes every mover's
        # signed force of every partner slot: [C-1, 2, M, B].
        signed = np.take(self._pm_rows, self._signed_rows, axis=0, out=self._signed, mode="clip")
        cmf = self._coll_mov_force
        if isinstance(cmf, slice):
            acc = force[:, cmf]  # a view: accumulate in place
            for k in range(signed.shape[0]):
                np.add(signed[k], acc, out=acc)
            return
        acc = force[:, cmf]
        for k in range(signed.shape[0]):
            acc = signed[k] + acc
        force[:, cmf] = acc

    def step(self, s: WorldState, u: np.ndarray, msg: np.ndarray | None) -> None:
        """One mpe2 ``World.step`` of every world; ``u`` (the move force, mpe2 adds 0.0 noise: an exact no-op)
        becomes the total force in place."""
        if self._n_mov:
            force = u
            if self._has_collisions:
                self._add_contacts(s.pos, force)
            if isinstance(self._mov, slice):
                self._integrate(s.pos[:, self._mov], s.vel[:, self._mov], force)
            else:  # fancy-indexed movers are copies: integrate them, then write them back
                pos_m, vel_m = s.pos[:, self._mov], s.vel[:, self._mov]
                self._integrate(pos_m, vel_m, force)
                s.pos[:, self._mov], s.vel[:, self._mov] = pos_m, vel_m
            if self._has_speed_limit:
                self._limit_speed(s)
        if self._talk.size:
            s.comm[self._talk] = msg  # silent agents keep zeros
        s.steps += 1

    def _integrate(self, pos: np.ndarray, vel: np.ndarray, force: np.ndarray) -> None:
        """mpe2: p_pos += p_vel * dt (the old velocity), then p_vel = p_vel * (1 - damping) + force / mass * dt."""
        np.multiply(vel, DT, out=self._tmp)
        np.add(pos, self._tmp, out=pos)
        if self._mass is not None:
            np.divide(force, self._mass, out=force)
        np.multiply(vel, _KEEP, out=vel)
        np.multiply(force, DT, out=force)
        np.add(vel, force, out=vel)

    def _limit_speed(self, s: WorldState) -> None:
        # mpe2: if |v| > max_speed: v = v / |v| * max_speed (|v| from np.square, same rounding).
        v = s.vel[:, self._speed_rows]
        speed = np.sqrt(v[0] * v[0] + v[1] * v[1])
        over = speed > self._max_speed  # dividing by 1.0 elsewhere (discarded): no 0/0, no costly np.errstate
        capped = v / np.where(over, speed, 1.0) * self._max_speed
        s.vel[:, self._speed_rows] = np.where(over, capped, v)
