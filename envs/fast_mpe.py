"""Fast batched numpy port of mpe2's particle-world physics (drop-in for ``SyncVectorEnv``).

Supported tasks: every mpe2 task (``SUPPORTED_ENV_IDS``: simple, simple_adversary, simple_crypto,
simple_push, simple_reference, simple_speaker_listener, simple_spread, simple_tag, simple_world_comm,
simple_formation, simple_line, collect_treasure), with continuous or discrete actions. The scenarios live
in :mod:`envs.fast_mpe_tasks` (one module per task). :class:`FastMPEVectorEnv` steps B worlds with a
handful of numpy calls per step and has the same interface as :class:`marl_stability.envs.vector.SyncVectorEnv`
(``layout``, ``num_envs``, ``reset``, ``step -> StepResult``, ``state_dict``, ``load_state_dict``,
``render``, ``close``). :class:`FastMPEParallelEnv` is a single-env PettingZoo ``ParallelEnv`` view of it.

Given the same state and actions, observations, rewards, terminations and truncations equal mpe2's
bit for bit (float64 maths in mpe2's operation order; observations cast to float32 at the end, rewards
to float32 in ``StepResult`` exactly like ``SyncVectorEnv``; episode returns are float64 sums of the
float64 rewards). ``tests/test_fast_mpe_lockstep.py`` checks this with no tolerance: 20 seeds per task
and action type over whole episodes, plus crowded starts where contacts and events happen. This holds on
every CPU: where mpe2 calls ``np.linalg.norm`` (formation, line, collect_treasure), a BLAS ``ddot`` whose
last bit depends on the OpenBLAS kernel (AVX-512 kernels fuse a multiply-add), the port reproduces that
call's arithmetic (:func:`envs.fast_mpe_tasks.base.norm_like_linalg`); CI reruns the exact tests under every
OpenBLAS kernel the machine can execute (``.ci/blas_kernels.py``).

Deliberate differences from mpe2 (+ SyncVectorEnv):

* Reset randomness: initial positions and goals are drawn from the same distributions as mpe2, but
  from one batched ``np.random.Generator`` owned by the vector env, not from each env's ``np_random``
  stream; ``reset(seed=s)`` therefore gives a different (equally distributed) initial state than
  ``mpe2.reset(seed=s)``, and the state an env gets depends on the batch size and on how many resets
  came before. Use :meth:`FastMPEVectorEnv.set_state_from_mpe` to copy a state. The same holds for
  collect_treasure's respawns (position and type of a treasure picked up on the previous step): drawn
  from the vector env's generator (``CollectTreasureScenario.draw_respawns``), not from mpe2's copy of
  the env stream.
* Task kwargs: each task's own size/ratio kwargs are supported (``N``, ``local_ratio``, ``num_good``,
  ``num_adversaries``, ``num_obstacles``, ``num_food``, ``num_forests``, ``num_collectors``,
  ``num_deposits``, ``num_treasures``, see :data:`envs.fast_mpe_tasks.TASKS`) with ``max_cycles``,
  ``continuous_actions``, ``dynamic_rescaling`` and ``terminate_on_success`` (simple_spread,
  simple_tag, simple_formation, simple_line: mpe2's termination on success, checked after the step's
  rewards; truncation at ``max_cycles`` wins, as in mpe2). ``render_mode`` (None or "rgb_array"),
  ``benchmark_data=False``, ``curriculum=False`` and ``num_*_neighbors=None`` (partial observability)
  are accepted because they are mpe2's defaults; any other value (or kwarg, or env id) raises
  ``EnvError``. Integer kwargs are checked (``max_cycles`` >= 1, counts >= 1 or >= 0 for
  obstacles/forests) where mpe2 would fail later or not at all.
* No motor/communication noise: no mpe2 task turns it on. ``accel`` (the action sensitivity),
  ``max_speed`` (simple_tag, simple_world_comm, collect_treasure) and ``mass`` (collect_treasure's
  deposits) are ported with mpe2's arithmetic.
* Landmarks have no stored velocity (never movable in mpe2's tasks); collect_treasure teleports them.
* simple_formation / simple_line match agents to targets with an optimal assignment: the port scores
  every permutation (N <= 7; scipy above), mpe2 calls scipy's ``linear_sum_assignment``. For positions
  in general position the optimum is unique and the rewards are identical; two assignments whose
  summed distances tie to the last bit could be resolved differently (a rounding-level reward change).
* Infos are empty (no ``benchmark_data``); rendering is only available as ``rgb_array`` and goes
  through a real mpe2 env whose state is overwritten with ours (``dynamic_rescaling`` affects
  rendering only, as in mpe2).
* Sum order: collision forces are accumulated per agent in entity order, exactly like mpe2's pair
  loop; reductions (sums, means, minima) follow numpy's order for mpe2's array sizes, and Python's
  ``rew += ...`` loops are replayed one addition at a time. Only the sign of a zero can differ.
* State save/restore stores the world state itself (positions, velocities, communication, goals,
  scenario arrays such as collect_treasure's treasures, step counters, returns, RNG state) instead of
  SyncVectorEnv's reset-seed + action-log replay.
* ``FastMPEParallelEnv.reset(seed=s)`` re-seeds the internal generator with ``s`` (reproducible, but
  not mpe2's stream, see the first point); its ``metadata["render_modes"]`` is ``["rgb_array"]`` only.
"""

from __future__ import annotations

import copy
import importlib
import numbers
from typing import Any

import gymnasium
import gymnasium.spaces
import numpy as np
from marl_stability.envs.fast_mpe_physics import ActionDecoder, Physics
from marl_stability.envs.fast_mpe_tasks import TASKS
from marl_stability.envs.fast_mpe_tasks.base import MOVE_DIM, Scenario, WorldState
from marl_stability.envs.registry import EnvError
from marl_stability.envs.vector import (
    AgentLayout,
    StepResult,
    check_action_batch,
    check_finite_outputs,
    check_state_matches,
)
from pettingzoo.utils.env import ParallelEnv

__all__ = ["SUPPORTED_ENV_IDS", "FastMPEVectorEnv", "FastMPEParallelEnv", "make_scenario"]

_STATE_VERSION = 1
_SEED_BOUND = 2**31 - 1

SUPPORTED_ENV_IDS: tuple[str, ...] = tuple(TASKS)

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


def _check_ratio(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise EnvError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise EnvError(f"{name} is a proportion and must be in [0, 1], got {value!r}")
    return float(value)


def make_scenario(
    env_id: str, env_kwargs: dict[str, Any] | None
) -> tuple[Scenario, dict[str, Any]]:
    """Validate ``env_kwargs`` for ``env_id``; return the scenario and the full kwargs."""
    if env_id not in TASKS:
        raise EnvError(
            f"fast MPE does not support env id {env_id!r}"
            f" (supported: {', '.join(SUPPORTED_ENV_IDS)})"
        )
    spec = TASKS[env_id]
    default_only = spec.default_only or {}
    cfg = dict(spec.params)
    for key, value in dict(env_kwargs or {}).items():
        if key in cfg:
            cfg[key] = value
        elif key == "render_mode" and value in (None, "rgb_array"):
            continue  # render() always works; the mode is not part of the dynamics
        elif key in default_only:
            default = default_only[key]
            if value != default or type(value) is not type(default):
                raise EnvError(
                    f"fast MPE supports {key}={default!r} only for {env_id}, got {value!r}"
                )
        else:
            raise EnvError(
                f"unknown keyword argument for fast {env_id}: {key!r}"
                f" (accepted: {', '.join(cfg)})"
            )
    for key, minimum in spec.int_min.items():
        cfg[key] = _check_int(key, cfg[key], minimum)
    for key, maximum in (spec.int_max or {}).items():
        if cfg[key] > maximum:
            raise EnvError(f"{key} must be <= {maximum} for {env_id}, got {cfg[key]!r}")
    for key in spec.ratios:
        cfg[key] = _check_ratio(key, cfg[key])
    for key in spec.flags:
        cfg[key] = _check_bool(key, cfg[key])
    cfg["continuous_actions"] = _check_bool("continuous_actions", cfg["continuous_actions"])
    cfg["dynamic_rescaling"] = _check_bool("dynamic_rescaling", cfg["dynamic_rescaling"])
    return spec.build(cfg), cfg


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


def _end_flags(
    out_of_time: np.ndarray, success: np.ndarray | None, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(terminated [B, N], truncated [B, N], done [B]): mpe2 truncates at max_cycles, else terminates on success."""
    b = out_of_time.shape[0]
    trunc = out_of_time.repeat(n).reshape(b, n)  # (1-D repeat: cheaper than repeat along an axis)
    if success is None:
        return np.zeros((b, n), dtype=bool), trunc, out_of_time
    return (success & ~out_of_time).repeat(n).reshape(b, n), trunc, out_of_time | success


def _episode_records(
    agents: tuple[str, ...],
    team_returns: np.ndarray,
    agent_returns: np.ndarray,
    steps: np.ndarray,
    idx: np.ndarray | slice,
) -> list[dict[str, Any]]:
    """One record per finished env ``idx`` (python floats/ints, converted in bulk); ``agent_returns`` is
    ``[N, B]``, ``idx`` the finished envs' indices or ``slice(None)`` for all of them."""
    envs = range(steps.shape[0]) if isinstance(idx, slice) else idx.tolist()
    # {agent: return} per env, filled agent by agent (the same dicts as dict(zip(agents, row)), in half the time)
    per_agent: list[dict[str, float]] = [{} for _ in envs]
    for agent, column in zip(agents, agent_returns[:, idx].tolist()):
        for returns, value in zip(per_agent, column):
            returns[agent] = value
    return [
        {"team_return": team, "agent_returns": returns, "length": length, "env_index": b}
        for team, returns, length, b in zip(team_returns[idx].tolist(), per_agent, steps[idx].tolist(), envs)
    ]


class _SpacesView:
    """Duck-typed env exposing only what :meth:`AgentLayout.from_env` reads."""

    def __init__(self, agents: tuple[str, ...], obs: dict[str, Any], act: dict[str, Any]) -> None:
        self.possible_agents = list(agents)
        self._obs, self._act = obs, act

    def observation_space(self, agent: str) -> Any:
        return self._obs[agent]

    def action_space(self, agent: str) -> Any:
        return self._act[agent]


class _FastMPEStateIO:
    """The state side of :class:`FastMPEVectorEnv`: the bridge to mpe2 (copy a world in or out, render
    through mpe2) and checkpoints (``state_dict``/``load_state_dict``, validated before anything changes)."""

    # ------------------------------------------------------------ mpe2 bridge
    @property
    def scenario(self) -> Scenario:
        """The task's batched scenario (static description, reset/observation/reward maths)."""
        return self._scn

    def seed(self, seed: int | None) -> None:
        """Re-seed the generator used for resets."""
        self._rng = np.random.default_rng(seed)

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
        for key, value in scn.aux_from_mpe(raw).items():
            s.aux[key][..., b] = value
        s.steps[b] = int(raw.steps)
        s.cam_range0[b] = float(raw.original_cam_range)
        self._agent_returns[:, b] = 0.0
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
        scn.aux_to_mpe(raw, {key: value[..., b] for key, value in s.aux.items()})
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
            "agent_returns": self._agent_returns.T.copy(),
            "team_returns": self._team_returns.copy(),
            # Scenario-specific arrays (e.g. collect_treasure's treasures), env axis first.
            "aux": {key: np.moveaxis(value, -1, 0).copy() for key, value in s.aux.items()},
        }

    def _check_aux(self, saved: Any) -> dict[str, np.ndarray]:
        """Validated scenario-specific arrays of a state dict, converted to the internal env-last layout."""
        if not isinstance(saved, dict) or set(saved) != set(self._s.aux):
            got = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            raise EnvError(f"fast MPE state has aux {got}, expected {sorted(self._s.aux)}")
        out: dict[str, np.ndarray] = {}
        for key, like in self._s.aux.items():
            try:
                arr = np.array(np.asarray(saved[key]), dtype=like.dtype)
            except (TypeError, ValueError) as exc:
                raise EnvError(f"invalid state['aux'][{key!r}] in fast MPE state: {exc}") from exc
            expected = (like.shape[-1],) + like.shape[:-1]
            if arr.shape != expected:
                raise EnvError(f"state['aux'][{key!r}] has shape {arr.shape}, expected {expected}")
            out[key] = np.ascontiguousarray(np.moveaxis(arr, 0, -1))
        return out

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
            ("agent_returns", self._agent_returns.T),
            ("team_returns", self._team_returns),
        ):
            try:
                arr = np.array(np.asarray(state[key]), dtype=like.dtype)  # state may hold torch tensors after a checkpoint
            except (KeyError, TypeError, ValueError) as exc:
                raise EnvError(f"invalid state[{key!r}] in fast MPE state: {exc}") from exc
            if arr.shape != like.shape:
                raise EnvError(f"state[{key!r}] has shape {arr.shape}, expected {like.shape}")
            new[key] = arr
        goals = new["goals"]
        if goals.size and (goals.min() < 0 or goals.max() >= self._scn.n_landmarks):
            raise EnvError(f"state['goals'] must be landmark indices in [0, {self._scn.n_landmarks})")
        aux = self._check_aux(state.get("aux", {}))
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
        self._agent_returns, self._team_returns = np.ascontiguousarray(new["agent_returns"].T), new["team_returns"]
        s.aux = aux
        # The obs to act on is always a function of the (post-autoreset) world state.
        self._obs = self._observe() if state["started"] else None



class FastMPEVectorEnv(_FastMPEStateIO):
    """``num_envs`` mpe2 worlds stepped together in numpy, with autoreset.

    Same interface and semantics as :class:`marl_stability.envs.vector.SyncVectorEnv` (see
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
            aux={key: np.zeros(shape + (b,), dtype=dtype) for key, (shape, dtype) in scn.aux_spec().items()},
        )
        self._agent_returns = np.zeros((n, b))  # float64 like EpisodeStatistics; [N, B] like the rewards
        self._team_returns = np.zeros(b)
        self._obs: np.ndarray | None = None
        self._render_env: Any = None
        self._precompute()

    # ------------------------------------------------------------------ setup
    def _precompute(self) -> None:
        """The per-step machinery (fixed per scenario and batch size): action decoder, physics, obs scratch."""
        scn, lay = self._scn, self.layout
        self._decode = ActionDecoder(scn, lay, self.continuous, self.num_envs)
        self._physics = Physics(scn, self.num_envs)
        self._obs_scratch = np.zeros((scn.n_agents, lay.max_obs_dim, self.num_envs), dtype=np.float32)

    # --------------------------------------------------------------- helpers
    def _reset_envs(self, idx: np.ndarray) -> None:
        """Fresh initial states for envs ``idx`` (sorted, distinct; mpe2's distributions, our stream)."""
        self._scn.reset_envs(self._s, idx, self._rng)
        sel = slice(None) if idx.size == self.num_envs else idx
        self._agent_returns[:, sel] = 0.0
        self._team_returns[sel] = 0.0

    def _observe_and_reward(
        self, rewards: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(obs [B,N,D] float32, rewards [N,B] float64 or None, success [B] bool or None: the task's
        ``terminate_on_success`` condition) of the current state."""
        s, scn = self._s, self._scn
        n = scn.n_agents
        out = self._obs_scratch  # scenarios write every non-padding entry; padding stays zero
        rel = dist = None
        if scn.uses_geometry:
            rel = s.pos[:, None, :, :] - s.pos[:, :n, None, :]  # [2, N, E, B] entity - agent
            if scn.uses_distances:
                sq = rel * rel
                dist = np.sqrt(sq[0] + sq[1])  # [N, E, B]; mpe2 sums x^2 + y^2 in this order
        scn.observe(s, rel, dist, out)
        obs = out.transpose(2, 0, 1).copy()  # always a copy: out is a reused scratch buffer
        if not rewards:
            return obs, None, None
        rew = scn.rewards(s, dist)  # before terminal(): formation/line reuse its assignment, like mpe2
        return obs, rew, scn.terminal(s, dist)

    def _observe(self) -> np.ndarray:
        """Observations [B, N, D] float32 of the current state."""
        return self._observe_and_reward(rewards=False)[0]

    def _transition(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Validate + step every env once, no autoreset.

        Returns (next_obs [B,N,D] f32, rewards [B,N] f64, terminated [B,N], truncated [B,N], done [B]).
        """
        if self._obs is None:
            raise EnvError("FastMPEVectorEnv.step() called before reset()")
        batch = check_action_batch(actions, self.num_envs, self.layout)
        u, msg = self._decode(batch)
        self._physics.step(self._s, u, msg)
        self._scn.post_step(self._s, self._rng)
        next_obs, rew_t, success = self._observe_and_reward()
        assert rew_t is not None
        rew = rew_t.T  # [B, N]
        term, trunc, done = _end_flags(self._s.steps >= self.max_cycles, success, self.layout.num_agents)
        self._obs = next_obs
        return next_obs, rew, term, trunc, done

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
        next_obs, rew, term, trunc, done = self._transition(actions)
        reward = rew.astype(np.float32)
        # The boundary check every vector env makes (one np.isfinite per array): a NaN from the physics or a
        # scenario is the env's failure, reported with env copy, agent and episode step.
        check_finite_outputs(self.env_id, self.layout.agents, self._s.steps, observation=next_obs, reward=reward)
        rew_t = rew.T  # [N, B], contiguous
        np.add(self._agent_returns, rew_t, out=self._agent_returns)
        for i in range(self.layout.num_agents):  # EpisodeStatistics' summation order
            np.add(self._team_returns, rew_t[i], out=self._team_returns)
        episodes: list[dict[str, Any]] = []
        obs_out = next_obs
        n_done = np.count_nonzero(done)
        if n_done:
            idx = np.flatnonzero(done)
            every = n_done == self.num_envs  # the usual case: every episode started together and ends together
            episodes = _episode_records(self.layout.agents, self._team_returns, self._agent_returns, self._s.steps,
                                        slice(None) if every else idx)
            self._reset_envs(idx)
            fresh = self._observe()
            check_finite_outputs(self.env_id, self.layout.agents, self._s.steps, observation=fresh)  # new episodes' obs
            obs_out = fresh if every else np.where(done[:, None, None], fresh, next_obs)
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
        next_obs, rew, term, trunc, _ = self._vec._transition(self._action_row(actions))
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
