"""Fast batched numpy port of mpe2's particle-world physics (drop-in for ``SyncVectorEnv``).

Supported tasks: ``simple_spread_v3``, ``simple_reference_v3`` and
``simple_speaker_listener_v4``, with continuous or discrete actions.
:class:`FastMPEVectorEnv` steps B worlds with a handful of numpy calls per
step and has the same interface as :class:`envs.vector.SyncVectorEnv`
(``layout``, ``num_envs``, ``reset``, ``step -> StepResult``, ``state_dict``,
``load_state_dict``, ``render``, ``close``). :class:`FastMPEParallelEnv` is a
single-env PettingZoo ``ParallelEnv`` view of it.

Given the same state and actions, observations, rewards, terminations and
truncations equal mpe2's (float64 maths in mpe2's operation order; observations
cast to float32 at the end, rewards to float32 in ``StepResult`` exactly like
``SyncVectorEnv``; episode returns are float64 sums of the float64 rewards).

Deliberate differences from mpe2 (+ SyncVectorEnv):

* Reset randomness: initial positions (uniform in [-1, 1]^2) and goal
  landmarks (uniform) are drawn from the same distributions as mpe2, but from
  one batched ``np.random.Generator`` owned by the vector env, not from each
  env's ``np_random`` stream; ``reset(seed=s)`` therefore gives a different
  (equally distributed) initial state than ``mpe2.reset(seed=s)``, and the
  state an env gets depends on the batch size and on how many resets came
  before. Use :meth:`FastMPEVectorEnv.set_state_from_mpe` to copy a state.
* Only the kwargs ``N`` (spread), ``local_ratio`` (spread, reference),
  ``max_cycles``, ``continuous_actions`` and ``dynamic_rescaling`` are
  supported. ``render_mode`` (None or "rgb_array"), ``benchmark_data=False``,
  ``curriculum=False``, ``terminate_on_success=False`` and
  ``num_*_neighbors=None`` are accepted because they are mpe2's defaults;
  any other value (or kwarg, or env id) raises ``EnvError``. So there is no
  early termination: every env ends by truncation at ``max_cycles``.
  ``max_cycles`` must be >= 1 and ``N`` >= 1 (mpe2 does not check these).
* No motor/communication noise and no ``max_speed``/``accel`` handling: none
  of the supported scenarios sets them (mpe2 defaults: noise off, speed
  unlimited, sensitivity 5.0).
* Landmarks never move and have no stored velocity (never movable here).
* Infos are empty (no ``benchmark_data``); rendering is only available as
  ``rgb_array`` and goes through a real mpe2 env whose state is overwritten
  with ours (``dynamic_rescaling`` affects rendering only, as in mpe2).
* Sum order: collision forces are accumulated per agent in entity order,
  exactly like mpe2's pair loop, so results are normally bit-identical; the
  only expected differences are signs of zero and possible last-ulp
  differences of numpy's vectorised ``logaddexp``/``sqrt`` loops vs. its
  scalar ones (well below the 1e-5 tolerance that the tests assert).
* State save/restore stores the world state itself (positions, velocities,
  communication, goals, step counters, returns, RNG state) instead of
  SyncVectorEnv's reset-seed + action-log replay.
* ``FastMPEParallelEnv.reset(seed=s)`` re-seeds the internal generator with
  ``s`` (reproducible, but not mpe2's stream, see the first point); its
  ``metadata["render_modes"]`` is ``["rgb_array"]`` only.
"""

from __future__ import annotations

import copy
import importlib
import numbers
from typing import Any

import gymnasium
import gymnasium.spaces
import numpy as np
from pettingzoo.utils.env import ParallelEnv

from envs.fast_mpe_scenarios import (
    CONTACT_FORCE,
    CONTACT_MARGIN,
    DAMPING,
    DT,
    MOVE_DIM,
    SENSITIVITY,
    ReferenceScenario,
    Scenario,
    SpeakerListenerScenario,
    SpreadScenario,
    WorldState,
)
from envs.registry import EnvError
from envs.vector import AgentLayout, StepResult, check_action_batch, check_finite_outputs, check_state_matches

__all__ = ["SUPPORTED_ENV_IDS", "FastMPEVectorEnv", "FastMPEParallelEnv", "make_scenario"]

_STATE_VERSION = 1
_SEED_BOUND = 2**31 - 1

# kwargs each task really supports, with mpe2's defaults.
_SUPPORTED: dict[str, dict[str, Any]] = {
    "simple_spread_v3": {
        "N": 3,
        "local_ratio": 0.5,
        "max_cycles": 25,
        "continuous_actions": False,
        "dynamic_rescaling": True,
    },
    "simple_reference_v3": {
        "local_ratio": 0.5,
        "max_cycles": 25,
        "continuous_actions": False,
        "dynamic_rescaling": True,
    },
    "simple_speaker_listener_v4": {
        "max_cycles": 25,
        "continuous_actions": False,
        "dynamic_rescaling": True,
    },
}
# kwargs mpe2 accepts that only change behaviour we do not port: allowed at their default.
_DEFAULT_ONLY: dict[str, dict[str, Any]] = {
    "simple_spread_v3": {
        "render_mode": None,
        "benchmark_data": False,
        "curriculum": False,
        "terminate_on_success": False,
        "num_agent_neighbors": None,
        "num_landmark_neighbors": None,
    },
    "simple_reference_v3": {"render_mode": None, "benchmark_data": False},
    "simple_speaker_listener_v4": {"render_mode": None, "benchmark_data": False},
}
SUPPORTED_ENV_IDS: tuple[str, ...] = tuple(_SUPPORTED)

# Discrete movement index -> force (mpe2: u[axis] = +-1.0, then u *= sensitivity).
_MOVE_TABLE_T = np.array([[0.0, -1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0, 1.0]]) * SENSITIVITY


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise EnvError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise EnvError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise EnvError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _check_ratio(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise EnvError(f"local_ratio must be a number, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise EnvError(f"local_ratio is a proportion and must be in [0, 1], got {value!r}")
    return float(value)


def make_scenario(
    env_id: str, env_kwargs: dict[str, Any] | None
) -> tuple[Scenario, dict[str, Any]]:
    """Validate ``env_kwargs`` for ``env_id``; return the scenario and the full kwargs."""
    if env_id not in _SUPPORTED:
        raise EnvError(
            f"fast MPE does not support env id {env_id!r}"
            f" (supported: {', '.join(SUPPORTED_ENV_IDS)})"
        )
    kwargs = dict(env_kwargs or {})
    cfg = dict(_SUPPORTED[env_id])
    for key, value in kwargs.items():
        if key in cfg:
            cfg[key] = value
        elif key == "render_mode" and value in (None, "rgb_array"):
            continue  # render() always works; the mode is not part of the dynamics
        elif key in _DEFAULT_ONLY[env_id]:
            default = _DEFAULT_ONLY[env_id][key]
            if value != default or type(value) is not type(default):
                raise EnvError(
                    f"fast MPE supports {key}={default!r} only for {env_id}, got {value!r}"
                )
        else:
            raise EnvError(
                f"unknown keyword argument for fast {env_id}: {key!r}"
                f" (accepted: {', '.join(cfg)})"
            )
    cfg["max_cycles"] = _check_int("max_cycles", cfg["max_cycles"], 1)
    cfg["continuous_actions"] = _check_bool("continuous_actions", cfg["continuous_actions"])
    cfg["dynamic_rescaling"] = _check_bool("dynamic_rescaling", cfg["dynamic_rescaling"])
    scenario: Scenario
    if env_id == "simple_spread_v3":
        cfg["N"] = _check_int("N", cfg["N"], 1)
        cfg["local_ratio"] = _check_ratio(cfg["local_ratio"])
        scenario = SpreadScenario(cfg["N"], cfg["local_ratio"])
    elif env_id == "simple_reference_v3":
        cfg["local_ratio"] = _check_ratio(cfg["local_ratio"])
        scenario = ReferenceScenario(cfg["local_ratio"])
    else:
        scenario = SpeakerListenerScenario()
    return scenario, cfg


def _spaces_for(
    scn: Scenario, continuous: bool
) -> tuple[dict[str, gymnasium.spaces.Box], dict[str, gymnasium.spaces.Space]]:
    """Observation and action spaces built with mpe2's formulas (SimpleEnv.__init__)."""
    obs_spaces: dict[str, gymnasium.spaces.Box] = {}
    act_spaces: dict[str, gymnasium.spaces.Space] = {}
    for i, name in enumerate(scn.agent_names):
        if scn.movable[i]:
            dim = MOVE_DIM
        else:
            dim = 0 if continuous else 1
        if not scn.silent[i]:
            dim = dim + scn.dim_c if continuous else dim * scn.dim_c
        if continuous:
            act_spaces[name] = gymnasium.spaces.Box(low=0, high=1, shape=(dim,))
        else:
            act_spaces[name] = gymnasium.spaces.Discrete(dim)
        obs_spaces[name] = gymnasium.spaces.Box(
            low=-np.float32(np.inf),
            high=+np.float32(np.inf),
            shape=(scn.obs_dims[i],),
            dtype=np.float32,
        )
    return obs_spaces, act_spaces


class _SpacesView:
    """Duck-typed env exposing only what :meth:`AgentLayout.from_env` reads."""

    def __init__(self, agents: tuple[str, ...], obs: dict[str, Any], act: dict[str, Any]) -> None:
        self.possible_agents = list(agents)
        self._obs, self._act = obs, act

    def observation_space(self, agent: str) -> Any:
        return self._obs[agent]

    def action_space(self, agent: str) -> Any:
        return self._act[agent]


def _as_slice(idx: np.ndarray) -> slice | np.ndarray:
    """A slice when ``idx`` is contiguous (basic indexing avoids copies), else the array."""
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        return slice(int(idx[0]), int(idx[0]) + int(idx.size))
    return idx


class _FastMPEStateIO:
    """The state side of :class:`FastMPEVectorEnv`: the bridge to mpe2 (copy a world in or out, render
    through mpe2) and checkpoints (``state_dict``/``load_state_dict``, validated before anything changes)."""

    # ------------------------------------------------------------ mpe2 bridge
    def set_state_from_mpe(self, env_index: int, mpe_env: Any) -> None:
        """Copy an mpe2 env's world state (any wrapper of the same task) into env ``env_index``.

        Episode returns of that env restart at zero; the step counter is mpe2's.
        """
        raw = mpe_env.unwrapped
        name = raw.metadata.get("name")
        if name != self.env_id:
            raise EnvError(f"cannot copy a {name!r} state into a {self.env_id!r} env")
        world, scn, s, b = raw.world, self._scn, self._s, int(env_index)
        if len(world.agents) != scn.n_agents or len(world.landmarks) != scn.n_landmarks:
            raise EnvError("mpe2 world has a different number of agents/landmarks")
        s.pos[:, :, b] = np.array([e.state.p_pos for e in world.entities], dtype=np.float64).T
        s.vel[:, :, b] = np.array([a.state.p_vel for a in world.agents], dtype=np.float64).T
        s.comm[:, :, b] = np.array([a.state.c for a in world.agents], dtype=np.float64)
        s.goals[:, b] = scn.goals_from_mpe(world)
        s.steps[b] = int(raw.steps)
        s.cam_range0[b] = float(raw.original_cam_range)
        self._agent_returns[b] = 0.0
        self._team_returns[b] = 0.0
        if self._obs is None:
            self._obs = np.zeros(
                (self.num_envs, scn.n_agents, self.layout.max_obs_dim), dtype=np.float32
            )
        self._obs[b] = self._observe()[b]

    def write_state_to_mpe(self, env_index: int, mpe_env: Any) -> None:
        """Overwrite an mpe2 env's world with env ``env_index``'s state (for rendering)."""
        raw = mpe_env.unwrapped
        world, scn, s, b = raw.world, self._scn, self._s, int(env_index)
        scn.goals_to_mpe(world, s.goals[:, b])
        for e, entity in enumerate(world.entities):
            entity.state.p_pos = s.pos[:, e, b].copy()
            entity.state.p_vel = s.vel[:, e, b].copy() if e < scn.n_agents else np.zeros(2)
        for i, agent in enumerate(world.agents):
            agent.state.c = s.comm[i, :, b].copy()
        raw.steps = int(s.steps[b])
        raw.original_cam_range = float(s.cam_range0[b])

    def render(self, env_index: int = 0) -> np.ndarray:
        """RGB frame [700, 700, 3] of env ``env_index``, drawn by a real mpe2 env."""
        if self._obs is None:
            raise EnvError("FastMPEVectorEnv.render() called before reset()")
        if self._render_env is None:
            module = importlib.import_module(f"mpe2.{self.env_id}")
            self._render_env = module.raw_env(render_mode="rgb_array", **self.env_kwargs)
            self._render_env.reset(seed=0)
        self.write_state_to_mpe(env_index, self._render_env)
        return self._render_env.render()

    # ---------------------------------------------------------- save/restore
    def state_dict(self) -> dict[str, Any]:
        """Exact resumable state: python builtins and ``np.ndarray`` copies only."""
        s = self._s
        return {
            "version": _STATE_VERSION,
            "kind": "fast_mpe",
            "env_id": self.env_id,
            "env_kwargs": dict(self.env_kwargs),
            "num_envs": self.num_envs,
            "agents": list(self.layout.agents),
            "started": self._obs is not None,
            "rng_state": copy.deepcopy(self._rng.bit_generator.state),
            # Public layout is env-first: [B, E, 2], [B, N, 2], [B, N, dim_c], [B, G].
            "pos": s.pos.transpose(2, 1, 0).copy(),
            "vel": s.vel.transpose(2, 1, 0).copy(),
            "comm": s.comm.transpose(2, 0, 1).copy(),
            "goals": s.goals.T.copy(),
            "steps": s.steps.copy(),
            "cam_range0": s.cam_range0.copy(),
            "agent_returns": self._agent_returns.copy(),
            "team_returns": self._team_returns.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; validates everything before changing anything."""
        if state.get("version") != _STATE_VERSION or state.get("kind") != "fast_mpe":
            raise EnvError(
                f"unsupported fast MPE state (version {state.get('version')!r},"
                f" kind {state.get('kind')!r})"
            )
        if state["env_id"] != self.env_id or dict(state["env_kwargs"]) != self.env_kwargs:
            raise EnvError(
                f"state is for {state['env_id']} {state['env_kwargs']},"
                f" this env is {self.env_id} {self.env_kwargs}"
            )
        check_state_matches(state, self.num_envs, self.layout)
        s = self._s
        new: dict[str, np.ndarray] = {}
        for key, like in (
            ("pos", s.pos.transpose(2, 1, 0)),
            ("vel", s.vel.transpose(2, 1, 0)),
            ("comm", s.comm.transpose(2, 0, 1)),
            ("goals", s.goals.T),
            ("steps", s.steps),
            ("cam_range0", s.cam_range0),
            ("agent_returns", self._agent_returns),
            ("team_returns", self._team_returns),
        ):
            try:
                arr = np.array(np.asarray(state[key]), dtype=like.dtype)  # state may hold torch tensors after a checkpoint
            except (KeyError, TypeError, ValueError) as exc:
                raise EnvError(f"invalid state[{key!r}] in fast MPE state: {exc}") from exc
            if arr.shape != like.shape:
                raise EnvError(f"state[{key!r}] has shape {arr.shape}, expected {like.shape}")
            new[key] = arr
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = copy.deepcopy(state["rng_state"])
        except (TypeError, ValueError, KeyError) as exc:
            raise EnvError(f"invalid rng_state in fast MPE state: {exc}") from exc
        # Commit only once everything validated.
        self._rng = rng
        s.pos = np.ascontiguousarray(new["pos"].transpose(2, 1, 0))
        s.vel = np.ascontiguousarray(new["vel"].transpose(2, 1, 0))
        s.comm = np.ascontiguousarray(new["comm"].transpose(1, 2, 0))
        s.goals = np.ascontiguousarray(new["goals"].T)
        s.steps, s.cam_range0 = new["steps"], new["cam_range0"]
        self._agent_returns, self._team_returns = new["agent_returns"], new["team_returns"]
        # The obs to act on is always a function of the (post-autoreset) world state.
        self._obs = self._observe() if state["started"] else None



class FastMPEVectorEnv(_FastMPEStateIO):
    """``num_envs`` mpe2 worlds stepped together in numpy, with autoreset.

    Same interface and semantics as :class:`envs.vector.SyncVectorEnv` (see
    the module docstring for the deliberate differences).
    """

    def __init__(
        self, env_id: str, env_kwargs: dict[str, Any] | None, num_envs: int, seed: int | None
    ) -> None:
        if isinstance(num_envs, (bool, np.bool_)) or not isinstance(num_envs, numbers.Integral):
            raise EnvError(f"num_envs must be an integer, got {num_envs!r}")
        if int(num_envs) < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        self.env_id: str = env_id
        self._scn, self._cfg = make_scenario(env_id, env_kwargs)
        self.env_kwargs: dict[str, Any] = dict(self._cfg)
        self.num_envs: int = int(num_envs)
        self.continuous: bool = self._cfg["continuous_actions"]
        self.max_cycles: int = self._cfg["max_cycles"]
        self.observation_spaces, self.action_spaces = _spaces_for(self._scn, self.continuous)
        scn = self._scn
        view = _SpacesView(scn.agent_names, self.observation_spaces, self.action_spaces)
        self.layout: AgentLayout = AgentLayout.from_env(view)  # type: ignore[arg-type]
        self._rng: np.random.Generator = np.random.default_rng(seed)

        b, n, e = self.num_envs, scn.n_agents, scn.n_entities
        self._s = WorldState(
            pos=np.zeros((2, e, b)),
            vel=np.zeros((2, n, b)),
            comm=np.zeros((n, scn.dim_c, b)),
            goals=np.zeros((scn.n_goals, b), dtype=np.int64),
            steps=np.zeros(b, dtype=np.int64),
            cam_range0=np.zeros(b),
        )
        self._agent_returns = np.zeros((b, n))  # float64, like EpisodeStatistics
        self._team_returns = np.zeros(b)
        self._obs: np.ndarray | None = None
        self._render_env: Any = None
        self._precompute()

    # ------------------------------------------------------------------ setup
    def _precompute(self) -> None:
        """Index helpers for action decoding and physics (fixed per scenario)."""
        scn, lay = self._scn, self.layout
        self._mov = _as_slice(np.flatnonzero(scn.movable))
        self._talk = np.flatnonzero(~scn.silent)
        # Columns holding each speaking agent's message: after the 5 move entries if it moves.
        offs = np.where(scn.movable[self._talk], MOVE_DIM, 0)
        self._talk_cols = offs[:, None] + np.arange(scn.dim_c)[None, :]
        self._talk_rows = self._talk[:, None]
        self._talk_moves = scn.movable[self._talk][:, None]
        # Discrete: argmax over the first act_dim entries only (padding -> -inf).
        self._act_valid = np.arange(lay.max_act_dim)[None, :] < np.array(lay.act_dims)[:, None]
        self._eye_c = np.eye(scn.dim_c)
        # Collisions: colliding entities, and which of them are movable agents.
        collide = np.concatenate([scn.agent_collide, scn.landmark_collide])
        coll = np.flatnonzero(collide)
        self._n_coll = int(coll.size)
        self._coll = _as_slice(coll)
        movable_ent = np.concatenate([scn.movable, np.zeros(scn.n_landmarks, dtype=bool)])
        coll_mov = np.flatnonzero(movable_ent[coll])  # positions within the colliders
        self._coll_mov = _as_slice(coll_mov)
        mov_idx = np.flatnonzero(scn.movable)
        # Position of each colliding movable agent within the movable-agent force array.
        self._coll_mov_force = _as_slice(np.searchsorted(mov_idx, coll[coll_mov]))
        # Unordered collider pairs (a < b): mpe2 computes each pair's force once.
        ia, ib = np.triu_indices(self._n_coll, k=1)
        self._pair_a, self._pair_b = ia, ib
        sizes = np.concatenate([scn.agent_size, scn.landmark_size])[coll]
        self._pair_dist_min = (sizes[ia] + sizes[ib])[:, None]
        self._has_collisions = ia.size > 0 and coll_mov.size > 0

    # --------------------------------------------------------------- helpers
    def seed(self, seed: int | None) -> None:
        """Re-seed the generator used for resets."""
        self._rng = np.random.default_rng(seed)

    def _reset_envs(self, idx: np.ndarray) -> None:
        """Fresh initial states for envs ``idx`` (mpe2's distributions, our stream)."""
        k, s, scn = idx.size, self._s, self._scn
        # Same draw order as mpe2's reset_world: goals, then agent and landmark positions.
        goals = scn.sample_goals(self._rng, k)  # [k, G]
        pos = self._rng.uniform(-1.0, 1.0, size=(k, scn.n_entities, 2))
        s.goals[:, idx] = goals.T
        s.pos[:, :, idx] = pos.transpose(2, 1, 0)
        s.vel[:, :, idx] = 0.0
        s.comm[:, :, idx] = 0.0
        s.steps[idx] = 0
        s.cam_range0[idx] = np.abs(pos).reshape(k, -1).max(axis=1)
        self._agent_returns[idx] = 0.0
        self._team_returns[idx] = 0.0

    def _observe_and_reward(self, rewards: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(obs [B,N,D] float32, rewards [N,B] float64 or None) of the current state."""
        s, scn = self._s, self._scn
        n = scn.n_agents
        out = np.zeros((n, self.layout.max_obs_dim, self.num_envs), dtype=np.float32)
        rel = s.pos[:, None, :, :] - s.pos[:, :n, None, :]  # [2, N, E, B] entity - agent
        scn.observe(s, rel, out)
        obs = np.ascontiguousarray(out.transpose(2, 0, 1))
        if not rewards:
            return obs, None
        sq = rel * rel
        dist = np.sqrt(sq[0] + sq[1])  # [N, E, B]; mpe2 sums x^2 + y^2 in this order
        agent_rew = scn.agent_rewards(s, dist)
        if scn.local_ratio is None:
            return obs, agent_rew
        g = scn.global_reward(s, dist, agent_rew)
        lr = scn.local_ratio
        return obs, g * (1 - lr) + agent_rew * lr

    def _observe(self) -> np.ndarray:
        """Observations [B, N, D] float32 of the current state."""
        return self._observe_and_reward(rewards=False)[0]

    def _decode(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actions -> (move force u [2, Nmov, B] f64, messages [Ntalk, dim_c, B] f64)."""
        if self.continuous:
            # Cast to the Box dtype and clip, like SyncVectorEnv + ClipOutOfBoundsWrapper.
            a = np.clip(batch.astype(np.float32), self.layout.act_low, self.layout.act_high)
            am = a[:, self._mov, :MOVE_DIM].transpose(2, 1, 0)  # [5, Nmov, B]
            # mpe2: u[0] += a[2] - a[1]; u[1] += a[4] - a[3] (difference taken in float32).
            u = (am[2:5:2] - am[1:4:2]).astype(np.float64) * SENSITIVITY
            msg = a[:, self._talk_rows, self._talk_cols].transpose(1, 2, 0).astype(np.float64)
            return u, msg
        masked = np.where(self._act_valid, batch, -np.inf)
        k = np.argmax(masked, axis=2).T  # [N, B], first max like np.argmax per agent
        u = _MOVE_TABLE_T[:, k[self._mov] % MOVE_DIM]
        kt = k[self._talk]
        # mpe2: movable speakers encode move + MOVE_DIM * message.
        words = np.where(self._talk_moves, kt // MOVE_DIM, kt)
        return u, self._eye_c[:, words].transpose(1, 0, 2)

    def _physics(self, u: np.ndarray, msg: np.ndarray) -> None:
        """One mpe2 ``World.step``: forces, integration, communication state."""
        s = self._s
        force = u  # mpe2 adds 0.0 noise: exact no-op
        if self._has_collisions:
            cpos = s.pos[:, self._coll]  # [2, C, B]
            ia, ib = self._pair_a, self._pair_b
            delta = cpos[:, ia] - cpos[:, ib]  # [2, P, B]: p_a - p_b
            sq = delta * delta
            dist = np.sqrt(sq[0] + sq[1])
            k = CONTACT_MARGIN
            pen = np.logaddexp(0.0, -(dist - self._pair_dist_min) / k) * k
            f = CONTACT_FORCE * delta / dist * pen  # force on a; b gets -f
            c = self._n_coll
            full = np.zeros((2, c, c, f.shape[2]))
            full[:, ia, ib] = f
            full[:, ib, ia] = -f
            # mpe2 loops over pairs (a<b) adding to both; for agent i that adds
            # its partners j in increasing order, which is what this loop does
            # (the zero self-term is an exact no-op).
            acc = force[:, self._coll_mov_force]
            rows = self._coll_mov
            for j in range(c):
                acc = full[:, rows, j] + acc
            force = force.copy()
            force[:, self._coll_mov_force] = acc
        mov = self._mov
        s.pos[:, mov] += s.vel[:, mov] * DT
        # mass is 1.0 for every entity: force / mass == force exactly.
        s.vel[:, mov] = s.vel[:, mov] * (1 - DAMPING) + force * DT
        if self._talk.size:
            s.comm[self._talk] = msg  # silent agents keep zeros
        s.steps += 1

    def _transition(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Validate + step every env once, no autoreset.

        Returns (next_obs [B,N,D] f32, rewards [B,N] f64, terminated [B,N], truncated [B,N]).
        """
        if self._obs is None:
            raise EnvError("FastMPEVectorEnv.step() called before reset()")
        batch = check_action_batch(actions, self.num_envs, self.layout)
        u, msg = self._decode(batch)
        self._physics(u, msg)
        next_obs, rew_t = self._observe_and_reward()
        assert rew_t is not None
        rew = rew_t.T  # [B, N]
        n = self.layout.num_agents
        trunc = np.repeat((self._s.steps >= self.max_cycles)[:, None], n, axis=1)
        term = np.zeros_like(trunc)  # no terminal condition in the supported tasks
        self._obs = next_obs
        return next_obs, rew, term, trunc

    # ------------------------------------------------------------ public API
    def reset(self) -> np.ndarray:
        """Reset every env; returns obs ``[B, N, D]`` float32."""
        self._reset_envs(np.arange(self.num_envs))
        obs = self._observe()
        check_finite_outputs(self.env_id, self.layout.agents, self._s.steps, observation=obs)
        self._obs = obs
        return self._obs.copy()

    def current_obs(self) -> np.ndarray:
        """Copy of the observation to act on (``[B, N, D]``)."""
        if self._obs is None:
            raise EnvError("FastMPEVectorEnv has not been reset")
        return self._obs.copy()

    def step(self, actions: Any) -> StepResult:
        """Step all envs with ``actions [B, N, max_act_dim]``; finished envs autoreset."""
        next_obs, rew, term, trunc = self._transition(actions)
        reward = rew.astype(np.float32)
        # The boundary check every vector env makes (one np.isfinite per array): a NaN from the physics or a
        # scenario is the env's failure, reported with env copy, agent and episode step.
        check_finite_outputs(self.env_id, self.layout.agents, self._s.steps, observation=next_obs, reward=reward)
        self._agent_returns += rew
        for i in range(self.layout.num_agents):  # EpisodeStatistics' summation order
            self._team_returns += rew[:, i]
        done = (term | trunc).all(axis=1)
        episodes: list[dict[str, Any]] = []
        obs_out = next_obs
        if done.any():
            idx = np.flatnonzero(done)
            agents = self.layout.agents
            for b in idx:
                episodes.append(
                    {
                        "team_return": float(self._team_returns[b]),
                        "agent_returns": {
                            a: float(self._agent_returns[b, i]) for i, a in enumerate(agents)
                        },
                        "length": int(self._s.steps[b]),
                        "env_index": int(b),
                    }
                )
            self._reset_envs(idx)
            fresh = self._observe()
            check_finite_outputs(self.env_id, self.layout.agents, self._s.steps, observation=fresh)  # new episodes' obs
            obs_out = np.where(done[:, None, None], fresh, next_obs)
            self._obs = obs_out
        return StepResult(
            obs_out.copy(),
            next_obs.copy(),
            reward,
            term,
            trunc,
            done,
            episodes,
        )

    def close(self) -> None:
        if self._render_env is not None:
            self._render_env.close()
            self._render_env = None


class FastMPEParallelEnv(ParallelEnv):
    """Single-env PettingZoo ``ParallelEnv`` backed by a ``FastMPEVectorEnv`` with B=1."""

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise EnvError(f"fast MPE renders only 'rgb_array', got render_mode={render_mode!r}")
        self._vec = FastMPEVectorEnv(env_id, env_kwargs, 1, seed)
        self.render_mode = render_mode
        self.metadata = {
            "render_modes": ["rgb_array"],
            "is_parallelizable": True,
            "render_fps": 10,
            "name": env_id,
        }
        self.possible_agents: list[str] = list(self._vec.layout.agents)
        self.agents: list[str] = []
        self._obs_spaces = self._vec.observation_spaces
        self._act_spaces = self._vec.action_spaces
        self.state_space = gymnasium.spaces.Box(
            low=-np.float32(np.inf),
            high=+np.float32(np.inf),
            shape=(sum(self._vec.layout.obs_dims),),
            dtype=np.float32,
        )

    @property
    def vector_env(self) -> FastMPEVectorEnv:
        """The underlying B=1 vector env (e.g. for ``set_state_from_mpe``)."""
        return self._vec

    def observation_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Space:
        return self._act_spaces[agent]

    def _obs_dict(self, row: np.ndarray) -> dict[str, np.ndarray]:
        dims = self._vec.layout.obs_dims
        return {a: row[i, : dims[i]].copy() for i, a in enumerate(self.possible_agents)}

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        if seed is not None:
            self._vec.seed(seed)
        obs = self._vec.reset()
        self.agents = self.possible_agents[:]
        return self._obs_dict(obs[0]), {a: {} for a in self.agents}

    def _action_row(self, actions: dict[str, Any]) -> np.ndarray:
        """Dict of env-format actions -> [1, N, max_act_dim] batch (discrete as one-hot)."""
        lay = self._vec.layout
        row = np.zeros((1, lay.num_agents, lay.max_act_dim), dtype=np.float32)
        for i, agent in enumerate(lay.agents):
            if agent not in actions:
                raise EnvError(f"missing action for agent {agent!r}")
            act = actions[agent]
            if lay.discrete[i]:
                k = int(np.asarray(act).reshape(-1)[0]) if np.ndim(act) else int(act)
                if not 0 <= k < lay.act_dims[i]:
                    raise EnvError(f"action {act!r} of agent {agent!r} is out of range")
                row[0, i, k] = 1.0
            else:
                vals = np.asarray(act, dtype=np.float32).reshape(-1)
                if vals.shape[0] != lay.act_dims[i]:
                    raise EnvError(f"action of agent {agent!r} must have {lay.act_dims[i]} values")
                row[0, i, : vals.shape[0]] = vals
        return row

    def step(
        self, actions: dict[str, Any]
    ) -> tuple[
        dict[str, np.ndarray],
        dict[str, float],
        dict[str, bool],
        dict[str, bool],
        dict[str, dict[str, Any]],
    ]:
        if not self.agents:
            return {}, {}, {}, {}, {}  # like mpe2's wrapper once every agent is done
        next_obs, rew, term, trunc = self._vec._transition(self._action_row(actions))
        agents = self.possible_agents
        obs = self._obs_dict(next_obs[0])
        rewards = {a: float(rew[0, i]) for i, a in enumerate(agents)}
        terminations = {a: bool(term[0, i]) for i, a in enumerate(agents)}
        truncations = {a: bool(trunc[0, i]) for i, a in enumerate(agents)}
        infos: dict[str, dict[str, Any]] = {a: {} for a in agents}
        if bool((term[0] | trunc[0]).all()):
            self.agents = []
        return obs, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """Concatenated observations of all agents (mpe2's ``state()``)."""
        row = self._vec.current_obs()[0]
        dims = self._vec.layout.obs_dims
        return np.concatenate([row[i, : dims[i]] for i in range(len(dims))])

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without a render_mode")
            return None
        return self._vec.render(0)

    def close(self) -> None:
        self._vec.close()
