"""Batched (vectorised) stepping of PettingZoo ParallelEnvs with fixed-size arrays.

Batched layout used by the whole project:

* observations ``[num_envs, num_agents, max_obs_dim]`` float32, zero-padded for
  agents whose observation is shorter than ``max_obs_dim``;
* actions ``[num_envs, num_agents, max_act_dim]`` float32. For a continuous
  agent the first ``act_dim`` entries are its Box action; for a discrete agent
  the first ``n`` entries are a one-hot/probability vector, converted with argmax;
* rewards ``[num_envs, num_agents]`` float32.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Optional, Sequence

import gymnasium.spaces
import numpy as np
from marl_stability.envs.registry import EnvError
from marl_stability.envs.wrappers import EpisodeStatistics
from pettingzoo.utils import BaseParallelWrapper
from pettingzoo.utils.env import ParallelEnv

__all__ = ["NonFiniteActionError", "EnvOutputError", "AgentLayout", "StepResult", "SyncVectorEnv", "check_finite_outputs"]

_STATE_VERSION = 1
# Episode seeds are drawn below 2**31 so every env/seeding backend accepts them.
_SEED_BOUND = 2**31 - 1


class NonFiniteActionError(EnvError):
    """An action batch contained NaN or inf; nothing was sent to any env."""


class EnvOutputError(EnvError):
    """The environment itself failed at the vector env's boundary: it returned a non-finite (or malformed)
    observation or reward, or raised in ``reset``/``step``. Not a bug of ours and not a learning outcome.

    It records where: ``env_id``, ``env_index`` (the env copy), ``agent``, ``field`` (``observation``,
    ``reward``, or None when the env raised) and ``episode_step`` (steps since that copy's last reset). The
    trainer adds the run's ``env_step`` and a ``context`` (e.g. ``evaluation 3``); ``str()`` is always one line.
    """

    def __init__(self, env_id: str, problem: str, env_index: int, agent: Optional[str] = None,
                 field: Optional[str] = None, episode_step: Optional[int] = None, detail: str = "") -> None:
        self.env_id, self.problem, self.env_index, self.agent = env_id, problem, int(env_index), agent
        self.field, self.episode_step, self.detail = field, episode_step, detail
        self.env_step: Optional[int] = None
        self.context = ""
        super().__init__(problem)

    def __str__(self) -> str:
        agent = f" for agent {self.agent}" if self.agent is not None else ""
        at = f" at env step {self.env_step}" if self.env_step is not None else ""
        where = [self.context] if self.context else []
        where.append(f"env copy {self.env_index}")
        if self.episode_step is not None:
            where.append(f"episode step {self.episode_step}")
        detail = f": {self.detail}" if self.detail else ""
        return " ".join(f"env {self.env_id} {self.problem}{agent}{at} ({', '.join(where)}){detail}".split())


def _one_line(e: BaseException) -> str:
    """``Type: first line of the message`` of an exception raised by a user's environment."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ``ndarray.all()`` goes through a Python wrapper (numpy's ``_methods._all``); the reduction itself is the same.
_all = np.logical_and.reduce


def check_finite_outputs(env_id: str, agents: Sequence[str], episode_steps: Any, **fields: np.ndarray) -> None:
    """Raise :class:`EnvOutputError` naming the first non-finite value of each ``[B, N, ...]`` array (keyword:
    the field's name, e.g. ``observation=obs``). One ``np.isfinite`` per array: cheap enough for every step."""
    for name, values in fields.items():
        finite = np.isfinite(values)
        if _all(finite, axis=None):
            continue
        bad = np.argwhere(~finite)[0]
        b, i = int(bad[0]), int(bad[1])
        value = values[tuple(bad)]
        raise EnvOutputError(env_id, f"returned a non-finite {name} ({value})", b, agents[i], name,
                             int(episode_steps[b]))


def _readonly_f32(x: Any) -> np.ndarray:
    """Float32 read-only copy, so a frozen layout really is immutable."""
    arr = np.array(x, dtype=np.float32)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class AgentLayout:
    """Static per-agent shapes of an env, in ``possible_agents`` order."""

    agents: tuple[str, ...]
    obs_dims: tuple[int, ...]
    act_dims: tuple[int, ...]
    discrete: tuple[bool, ...]
    act_low: np.ndarray = field(repr=False)  # [N, max_act_dim] float32
    act_high: np.ndarray = field(repr=False)  # [N, max_act_dim] float32

    def __post_init__(self) -> None:
        n = len(self.agents)
        if n == 0:
            raise EnvError("environment has no agents")
        if not (len(self.obs_dims) == len(self.act_dims) == len(self.discrete) == n):
            raise EnvError("AgentLayout fields must all have one entry per agent")
        # object.__setattr__ because the dataclass is frozen.
        object.__setattr__(self, "agents", tuple(str(a) for a in self.agents))
        object.__setattr__(self, "obs_dims", tuple(int(d) for d in self.obs_dims))
        object.__setattr__(self, "act_dims", tuple(int(d) for d in self.act_dims))
        object.__setattr__(self, "discrete", tuple(bool(d) for d in self.discrete))
        for name in ("act_low", "act_high"):
            arr = _readonly_f32(getattr(self, name))
            if arr.shape != (n, self.max_act_dim):
                raise EnvError(f"{name} must have shape {(n, self.max_act_dim)}, got {arr.shape}")
            object.__setattr__(self, name, arr)

    @cached_property
    def num_agents(self) -> int:
        return len(self.agents)

    @cached_property
    def max_obs_dim(self) -> int:
        return max(self.obs_dims)

    @cached_property
    def max_act_dim(self) -> int:
        return max(self.act_dims)

    @property
    def all_discrete(self) -> bool:
        return all(self.discrete)

    @property
    def all_continuous(self) -> bool:
        return not any(self.discrete)

    @classmethod
    def from_env(cls, env: ParallelEnv) -> AgentLayout:
        """Read agents and spaces; only 1-D Box obs and 1-D Box/Discrete actions are supported."""
        agents = tuple(env.possible_agents)
        obs_dims: list[int] = []
        act_dims: list[int] = []
        discrete: list[bool] = []
        bounds: list[tuple[np.ndarray, np.ndarray]] = []
        for agent in agents:
            obs_space = env.observation_space(agent)
            if not (isinstance(obs_space, gymnasium.spaces.Box) and len(obs_space.shape) == 1):
                raise EnvError(
                    f"agent {agent!r}: only 1-D Box observations are supported, got {obs_space!r}"
                )
            obs_dims.append(int(obs_space.shape[0]))
            act_space = env.action_space(agent)
            if isinstance(act_space, gymnasium.spaces.Discrete):
                n = int(act_space.n)
                act_dims.append(n)
                discrete.append(True)
                bounds.append((np.zeros(n), np.ones(n)))
            elif isinstance(act_space, gymnasium.spaces.Box) and len(act_space.shape) == 1:
                act_dims.append(int(act_space.shape[0]))
                discrete.append(False)
                bounds.append((act_space.low, act_space.high))
            else:
                raise EnvError(
                    f"agent {agent!r}: only 1-D Box or Discrete actions are supported,"
                    f" got {act_space!r}"
                )
        width = max(act_dims) if act_dims else 0
        # Padding entries get [0, 1]: harmless bounds for unused columns.
        low = np.zeros((len(agents), width), dtype=np.float32)
        high = np.ones((len(agents), width), dtype=np.float32)
        for i, (lo, hi) in enumerate(bounds):
            low[i, : len(lo)] = lo
            high[i, : len(hi)] = hi
        return cls(agents, tuple(obs_dims), tuple(act_dims), tuple(discrete), low, high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able representation for run metadata."""
        return {
            "agents": list(self.agents),
            "obs_dims": list(self.obs_dims),
            "act_dims": list(self.act_dims),
            "discrete": list(self.discrete),
            "act_low": self.act_low.tolist(),
            "act_high": self.act_high.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentLayout:
        """Inverse of :meth:`to_dict`."""
        return cls(
            tuple(data["agents"]),
            tuple(data["obs_dims"]),
            tuple(data["act_dims"]),
            tuple(data["discrete"]),
            np.asarray(data["act_low"], dtype=np.float32),
            np.asarray(data["act_high"], dtype=np.float32),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AgentLayout):
            return NotImplemented
        return (
            self.agents == other.agents
            and self.obs_dims == other.obs_dims
            and self.act_dims == other.act_dims
            and self.discrete == other.discrete
            and np.array_equal(self.act_low, other.act_low)
            and np.array_equal(self.act_high, other.act_high)
        )

    def __hash__(self) -> int:
        return hash((self.agents, self.obs_dims, self.act_dims, self.discrete))


@dataclass
class StepResult:
    """Outcome of one :meth:`SyncVectorEnv.step` (B = num_envs, N = num_agents)."""

    obs: np.ndarray  # [B,N,D] obs to act on next (new episode's first obs where done)
    next_obs: np.ndarray  # [B,N,D] true next obs of this transition (store in replay)
    reward: np.ndarray  # [B,N] float32
    terminated: np.ndarray  # [B,N] bool
    truncated: np.ndarray  # [B,N] bool
    done: np.ndarray  # [B] bool: env b's episode ended this step
    episodes: list[dict[str, Any]]  # EpisodeStatistics records + "env_index"


@dataclass
class _EnvStep:
    """One env's converted step outcome (rows of the batched arrays)."""

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    done: bool
    infos: dict[str, dict[str, Any]]


def _find_stats(env: ParallelEnv) -> EpisodeStatistics | None:
    """The EpisodeStatistics wrapper inside ``env``'s wrapper chain, if any."""
    while isinstance(env, BaseParallelWrapper):
        if isinstance(env, EpisodeStatistics):
            return env
        env = env.env
    return None


def check_state_matches(state: dict[str, Any], num_envs: int, layout: AgentLayout) -> None:
    """A saved vector-env state must be for the same number of env copies and the same agents."""
    if int(state["num_envs"]) != num_envs:
        raise EnvError(f"state has {state['num_envs']} envs, this vector env has {num_envs}")
    if tuple(state["agents"]) != layout.agents:
        raise EnvError(f"state agents {state['agents']} do not match {list(layout.agents)}")


def check_action_batch(actions: Any, num_envs: int, layout: AgentLayout) -> np.ndarray:
    """Validate a batch of actions before any env is stepped: shape, numeric dtype, and finiteness of the
    whole batch (padding included: a non-finite value anywhere means the policy has diverged)."""
    batch = np.asarray(actions)
    expected = (num_envs, layout.num_agents, layout.max_act_dim)
    if batch.shape != expected:
        raise EnvError(f"actions must have shape {expected}, got {batch.shape}")
    kind = batch.dtype.kind  # f: floating, i/u: integer (np.issubdtype's classes, without its cost per step)
    if kind not in "fiu":
        raise EnvError(f"actions must be a numeric array, got dtype {batch.dtype}")
    if kind != "f":
        return batch  # integers are always finite
    finite = np.isfinite(batch)
    if not _all(finite, axis=None):
        bad_envs = sorted({int(b) for b in np.nonzero(~finite)[0]})
        raise NonFiniteActionError(f"non-finite action values in env(s) {bad_envs}; no environment was stepped")
    return batch


def _obs_row(env_id: str, layout: AgentLayout, b: int, obs: dict[str, Any], episode_step: int,
             live: list[str] | None = None) -> np.ndarray:
    """[N, D] float32 row of env copy ``b``; agents absent from ``obs`` (or not live) are zeros. An observation
    that is not numeric or not of its space's size is an :class:`EnvOutputError`."""
    row = np.zeros((layout.num_agents, layout.max_obs_dim), dtype=np.float32)
    for i, agent in enumerate(layout.agents):
        if agent in obs and (live is None or agent in live):
            try:
                values = np.asarray(obs[agent], dtype=np.float32).reshape(-1)
            except (TypeError, ValueError) as e:
                raise EnvOutputError(env_id, "returned a malformed observation", b, agent, "observation", episode_step,
                                     _one_line(e)) from None
            if values.shape[0] != layout.obs_dims[i]:
                raise EnvOutputError(env_id, f"returned an observation of size {values.shape[0]} (its space has "
                                     f"{layout.obs_dims[i]})", b, agent, "observation", episode_step)
            row[i, : values.shape[0]] = values
    return row


def _reward(env_id: str, b: int, agent: str, value: Any, episode_step: int) -> float:
    """One agent's reward as a float (a value that is not a number is an :class:`EnvOutputError`)."""
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise EnvOutputError(env_id, "returned a malformed reward", b, agent, "reward", episode_step,
                             _one_line(e)) from None


class SyncVectorEnv:
    """Step ``num_envs`` copies of a ParallelEnv in lock-step with autoreset.

    Every episode reset uses a seed drawn from this object's own generator
    (made from ``seed``), so a run is reproducible end to end and can be saved
    and restored exactly with :meth:`state_dict` / :meth:`load_state_dict`.

    Continuous actions are cast to the Box dtype and clipped to its bounds
    before reaching the env (mpe2 warns on out-of-range actions). Any
    non-finite value in the action batch, padding included, raises
    :class:`NonFiniteActionError` before any env is stepped. What comes back
    is checked too: a non-finite or malformed observation or reward, or an
    exception raised by an env's ``reset``/``step``, raises
    :class:`EnvOutputError` naming ``name`` (the env id), the env copy, the
    agent and the episode step; the vector env must not be stepped after it.
    An env without an :class:`EpisodeStatistics` wrapper gets one as the
    outermost wrapper so that episode records are always available.
    """

    def __init__(self, env_fn: Callable[[], ParallelEnv], num_envs: int, seed: int, name: Optional[str] = None) -> None:
        if int(num_envs) < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs: int = int(num_envs)
        self.envs: list[ParallelEnv] = []
        self._stats: list[EpisodeStatistics] = []
        for _ in range(self.num_envs):
            env = env_fn()
            if not isinstance(env, ParallelEnv):
                raise EnvError(f"env_fn returned {type(env).__name__}, not a ParallelEnv")
            stats = _find_stats(env)
            if stats is None:
                env = stats = EpisodeStatistics(env)
            self.envs.append(env)
            self._stats.append(stats)
        unwrapped = getattr(self.envs[0], "unwrapped", self.envs[0])
        self.env_id: str = name or str((getattr(unwrapped, "metadata", None) or {}).get("name") or type(unwrapped).__name__)
        self.layout: AgentLayout = AgentLayout.from_env(self.envs[0])
        for env in self.envs[1:]:
            if AgentLayout.from_env(env) != self.layout:
                raise EnvError("env_fn must build environments with identical agents and spaces")
        # Spaces of env 0 are used for conversion; all envs share the layout.
        self._act_spaces: list[gymnasium.spaces.Space] = [
            self.envs[0].action_space(a) for a in self.layout.agents
        ]
        self._rng: np.random.Generator = np.random.default_rng(seed)
        self._episode_seeds: list[int | None] = [None] * self.num_envs
        # Env-format actions since each env's last reset; cleared on reset, so
        # its length is bounded by the episode length.
        self._action_logs: list[list[dict[str, Any]]] = [[] for _ in range(self.num_envs)]
        self._obs: np.ndarray | None = None

    # ------------------------------------------------------------------ helpers
    def _reset_env(self, b: int, seed: int) -> np.ndarray:
        """Reset env ``b`` with ``seed`` and clear its action log."""
        try:
            obs, _ = self.envs[b].reset(seed=seed)
        except Exception as e:  # the user's env: its failure is reported, with the seed that reproduces it
            raise EnvOutputError(self.env_id, f"raised in reset(seed={seed})", b, detail=_one_line(e)) from e
        self._episode_seeds[b] = seed
        self._action_logs[b] = []
        return _obs_row(self.env_id, self.layout, b, obs, 0)

    def _draw_seed(self) -> int:
        return int(self._rng.integers(0, _SEED_BOUND))

    def _to_env_actions(self, b: int, row: np.ndarray) -> dict[str, Any]:
        """Convert one env's [N, max_act_dim] row into the env's action dict."""
        live = self.envs[b].agents
        actions: dict[str, Any] = {}
        for i, agent in enumerate(self.layout.agents):
            if agent not in live:
                continue  # dropped-out agents must not receive actions
            space = self._act_spaces[i]
            dim = self.layout.act_dims[i]
            if self.layout.discrete[i]:
                assert isinstance(space, gymnasium.spaces.Discrete)
                actions[agent] = int(space.start) + int(np.argmax(row[i, :dim]))
            else:
                assert isinstance(space, gymnasium.spaces.Box)
                act = np.asarray(row[i, :dim], dtype=space.dtype)
                actions[agent] = np.clip(act, space.low, space.high).astype(space.dtype)
        return actions

    def _step_env(self, b: int, actions: dict[str, Any], episode_step: int) -> _EnvStep:
        """Step env ``b`` (its ``episode_step``-th step since reset) and convert its dict outputs into padded rows."""
        env = self.envs[b]
        live_before = list(env.agents)
        try:
            obs, rewards, terminated, truncated, infos = env.step(actions)
        except Exception as e:  # the user's env: reported as its failure, not as a crash of the run
            raise EnvOutputError(self.env_id, "raised in step", b, episode_step=episode_step, detail=_one_line(e)) from e
        n = self.layout.num_agents
        reward = np.zeros(n, dtype=np.float32)
        term = np.ones(n, dtype=bool)  # dropped-out agents count as terminated
        trunc = np.zeros(n, dtype=bool)
        for i, agent in enumerate(self.layout.agents):
            if agent in live_before:
                reward[i] = _reward(self.env_id, b, agent, rewards.get(agent, 0.0), episode_step)
                term[i] = bool(terminated.get(agent, False))
                trunc[i] = bool(truncated.get(agent, False))
        live_idx = [i for i, a in enumerate(self.layout.agents) if a in live_before]
        done = not env.agents or bool(np.all(term[live_idx] | trunc[live_idx]))
        row = _obs_row(self.env_id, self.layout, b, obs, episode_step, live_before)
        return _EnvStep(row, reward, term, trunc, done, infos)

    # --------------------------------------------------------------- public API
    def reset(self) -> np.ndarray:
        """Reset every env with fresh seeds; returns obs ``[B, N, D]``."""
        obs = np.stack([self._reset_env(b, self._draw_seed()) for b in range(self.num_envs)])
        check_finite_outputs(self.env_id, self.layout.agents, np.zeros(self.num_envs, int), observation=obs)
        self._obs = obs
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        """Step all envs with ``actions [B, N, max_act_dim]``; finished envs autoreset."""
        if self._obs is None:
            raise EnvError("SyncVectorEnv.step() called before reset()")
        batch = check_action_batch(actions, self.num_envs, self.layout)
        # Convert every env's actions first so a failure leaves all envs untouched.
        env_actions = [self._to_env_actions(b, batch[b]) for b in range(self.num_envs)]

        b_n, n, d = self.num_envs, self.layout.num_agents, self.layout.max_obs_dim
        obs_out = np.zeros((b_n, n, d), dtype=np.float32)
        next_obs = np.zeros((b_n, n, d), dtype=np.float32)
        reward = np.zeros((b_n, n), dtype=np.float32)
        terminated = np.zeros((b_n, n), dtype=bool)
        truncated = np.zeros((b_n, n), dtype=bool)
        done = np.zeros(b_n, dtype=bool)
        episode_steps = np.zeros(b_n, dtype=int)
        episodes: list[dict[str, Any]] = []
        for b in range(self.num_envs):
            self._action_logs[b].append(env_actions[b])
            episode_steps[b] = len(self._action_logs[b])
            res = self._step_env(b, env_actions[b], int(episode_steps[b]))
            next_obs[b], reward[b] = res.obs, res.reward
            terminated[b], truncated[b], done[b] = res.terminated, res.truncated, res.done
            if res.done:
                record = self._episode_record(b, res.infos)
                if record is not None:
                    episodes.append(record)
                obs_out[b] = self._reset_env(b, self._draw_seed())
            else:
                obs_out[b] = res.obs
        agents = self.layout.agents
        check_finite_outputs(self.env_id, agents, episode_steps, observation=next_obs, reward=reward)
        if done.any():  # the first observations of the episodes that autoreset (the other rows are next_obs)
            check_finite_outputs(self.env_id, agents, np.where(done, 0, episode_steps), observation=obs_out)
        self._obs = obs_out
        return StepResult(obs_out.copy(), next_obs, reward, terminated, truncated, done, episodes)

    def _episode_record(self, b: int, infos: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """The finished episode's statistics record, tagged with ``env_index``."""
        found = [i["episode"] for i in infos.values() if isinstance(i, dict) and "episode" in i]
        record = found[0] if found else None
        if record is None:
            record = self._stats[b].last_episode
        if record is None:
            return None
        out = dict(record)
        out["agent_returns"] = dict(record.get("agent_returns", {}))
        out["env_index"] = b
        return out

    def render(self, env_index: int = 0) -> Any:
        """Render env ``env_index`` (it must have been made with render_mode="rgb_array")."""
        return self.envs[env_index].render()

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # ------------------------------------------------------------ save/restore
    def _log_to_plain(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Env-format actions as plain python (float32 -> float is exact)."""
        return {
            agent: (int(a) if isinstance(a, (int, np.integer)) else np.asarray(a).tolist())
            for agent, a in entry.items()
        }

    def _log_from_plain(self, entry: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for agent, a in entry.items():
            i = self.layout.agents.index(agent)
            space = self._act_spaces[i]
            out[agent] = int(a) if self.layout.discrete[i] else np.asarray(a, dtype=space.dtype)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Exact resumable state: only python builtins and ``np.ndarray`` (obs)."""
        started = self._obs is not None
        envs: list[dict[str, Any]] = []
        for b in range(self.num_envs):
            envs.append(
                {
                    "episode_seed": self._episode_seeds[b],
                    "actions": [self._log_to_plain(e) for e in self._action_logs[b]],
                    "obs": self._obs[b].copy() if self._obs is not None else None,
                }
            )
        return {
            "version": _STATE_VERSION,
            "num_envs": self.num_envs,
            "agents": list(self.layout.agents),
            "started": started,
            "rng_state": copy.deepcopy(self._rng.bit_generator.state),
            "envs": envs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore by ``reset(seed)`` + replaying logged actions, then verify the obs."""
        if state.get("version") != _STATE_VERSION:
            raise EnvError(f"unsupported vector env state version {state.get('version')!r}")
        check_state_matches(state, self.num_envs, self.layout)
        if not state["started"]:
            self._rng.bit_generator.state = copy.deepcopy(state["rng_state"])
            self._obs = None
            return
        rows: list[np.ndarray] = []
        logs: list[list[dict[str, Any]]] = []
        for b, env_state in enumerate(state["envs"]):
            row = self._reset_env(b, int(env_state["episode_seed"]))
            log = [self._log_from_plain(e) for e in env_state["actions"]]
            for t, actions in enumerate(log, start=1):
                res = self._step_env(b, actions, t)
                if res.done:
                    raise EnvError(
                        "environment is not deterministic under reset(seed) + action replay;"
                        " cannot resume exactly"
                    )
                row = res.obs
            saved = np.asarray(env_state["obs"], dtype=np.float32)
            if not np.array_equal(row, saved):
                raise EnvError(
                    "environment is not deterministic under reset(seed) + action replay;"
                    " cannot resume exactly"
                )
            rows.append(row)
            logs.append(log)
        # Only commit once every env replayed successfully.
        self._action_logs = logs
        self._rng.bit_generator.state = copy.deepcopy(state["rng_state"])
        self._obs = np.stack(rows)


class VectorAffine:
    """Reward scale and observation scale/offset on a whole vector env (the batched twin of the
    ``RewardScale``/``ObservationAffine`` wrappers, for vector envs that are not made of PettingZoo envs).

    Only each agent's real observation columns are transformed (padding stays zero), and episode records
    keep the raw env reward, exactly as with the per-env wrappers.
    """

    def __init__(self, venv: Any, reward_scale: float = 1.0, obs_scale: float = 1.0, obs_offset: float = 0.0) -> None:
        if not all(np.isfinite([reward_scale, obs_scale, obs_offset])) or obs_scale == 0:
            raise EnvError("reward_scale, obs_scale and obs_offset must be finite and obs_scale non-zero")
        self.venv = venv
        self.layout = venv.layout
        self.num_envs = venv.num_envs
        self.reward_scale, self.obs_scale, self.obs_offset = reward_scale, obs_scale, obs_offset
        self._mask = np.zeros((self.layout.num_agents, self.layout.max_obs_dim), bool)
        for i, d in enumerate(self.layout.obs_dims):
            self._mask[i, :d] = True

    def _obs(self, obs: np.ndarray) -> np.ndarray:
        return np.where(self._mask, obs * np.float32(self.obs_scale) + np.float32(self.obs_offset), obs).astype(np.float32)

    def reset(self) -> np.ndarray:
        return self._obs(self.venv.reset())

    def step(self, actions: np.ndarray) -> StepResult:
        r = self.venv.step(actions)
        return StepResult(obs=self._obs(r.obs), next_obs=self._obs(r.next_obs),
                          reward=(r.reward * np.float32(self.reward_scale)).astype(np.float32),
                          terminated=r.terminated, truncated=r.truncated, done=r.done, episodes=r.episodes)

    def state_dict(self) -> dict[str, Any]:
        return self.venv.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.venv.load_state_dict(state)

    def render(self, env_index: int = 0) -> Any:
        return self.venv.render(env_index)

    def close(self) -> None:
        self.venv.close()
