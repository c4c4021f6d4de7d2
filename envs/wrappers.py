"""PettingZoo ``ParallelEnv`` wrappers used by the trainer.

Wrapping order matters (see :func:`make_wrapped`): :class:`EpisodeStatistics`
is the innermost wrapper, so the episode records it produces always contain
the *raw* environment reward, even when :class:`RewardScale` is applied on top
to induce the failure mode on purpose.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium.spaces
import numpy as np
from marl_stability.envs.registry import EnvError, make
from pettingzoo.utils import BaseParallelWrapper
from pettingzoo.utils.env import ParallelEnv

__all__ = ["RewardScale", "ObservationAffine", "EpisodeStatistics", "make_wrapped"]

AgentID = str
ObsDict = dict[AgentID, Any]
StepReturn = tuple[
    ObsDict, dict[AgentID, float], dict[AgentID, bool], dict[AgentID, bool], dict[AgentID, dict]
]


def _check_finite(name: str, value: float) -> float:
    """Reject NaN/inf wrapper parameters early: they would silently poison training."""
    value = float(value)
    if not math.isfinite(value):
        raise EnvError(f"{name} must be finite, got {value!r}")
    return value


class RewardScale(BaseParallelWrapper):
    """Multiply every agent's reward by ``scale`` (rewards become python floats)."""

    def __init__(self, env: ParallelEnv, scale: float) -> None:
        super().__init__(env)
        self.scale: float = _check_finite("reward scale", scale)

    def step(self, actions: dict[AgentID, Any]) -> StepReturn:
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        # A plain dict: mpe2 returns a defaultdict, whose default would be unscaled.
        scaled = {agent: float(r) * self.scale for agent, r in rewards.items()}
        return obs, scaled, terminated, truncated, infos


class ObservationAffine(BaseParallelWrapper):
    """``obs' = obs * scale + offset`` with observation spaces transformed to match.

    Only ``Box`` observation spaces are supported. Arithmetic is done in the
    space's dtype (float32 for mpe2) so observations stay inside the new bounds
    exactly; with ``scale < 0`` the bounds swap roles.
    """

    def __init__(self, env: ParallelEnv, scale: float, offset: float) -> None:
        super().__init__(env)
        self.scale: float = _check_finite("observation scale", scale)
        self.offset: float = _check_finite("observation offset", offset)
        if self.scale == 0.0:
            # Zero would collapse every observation to a constant (and inf*0 = NaN bounds).
            raise EnvError("observation scale must be non-zero")
        self._spaces: dict[AgentID, gymnasium.spaces.Box] = {}
        for agent in env.possible_agents:
            space = env.observation_space(agent)
            if not isinstance(space, gymnasium.spaces.Box):
                raise EnvError(
                    f"ObservationAffine needs Box observations; agent {agent!r} has {space!r}"
                )
            low = self._apply(space.low, space.dtype)
            high = self._apply(space.high, space.dtype)
            if self.scale < 0:
                low, high = high, low
            self._spaces[agent] = gymnasium.spaces.Box(
                low=low, high=high, shape=space.shape, dtype=space.dtype
            )
        # Some callers read the dict attribute instead of the method.
        self.observation_spaces = dict(self._spaces)

    def _apply(self, x: np.ndarray, dtype: Any) -> np.ndarray:
        """Affine map computed in ``dtype`` (no silent float64 upcast)."""
        dtype = np.dtype(dtype)
        arr = np.asarray(x, dtype=dtype)
        return (arr * dtype.type(self.scale) + dtype.type(self.offset)).astype(dtype, copy=False)

    def _transform(self, obs: ObsDict) -> ObsDict:
        return {
            agent: self._apply(o, self._spaces[agent].dtype) if agent in self._spaces else o
            for agent, o in obs.items()
        }

    def observation_space(self, agent: AgentID) -> gymnasium.spaces.Space:
        # Must return the same object each call (parallel_api_test checks identity).
        return self._spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsDict, dict[AgentID, dict]]:
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._transform(obs), infos

    def step(self, actions: dict[AgentID, Any]) -> StepReturn:
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        return self._transform(obs), rewards, terminated, truncated, infos


class EpisodeStatistics(BaseParallelWrapper):
    """Track per-agent return, team return and length of each episode.

    When an episode ends (every agent in the step's dicts is terminated or
    truncated, or ``env.agents`` is empty) the record
    ``{"team_return": float, "agent_returns": {agent: float}, "length": int}``
    is stored in ``self.last_episode`` and in ``infos[agent]["episode"]`` of
    the final step. ``team_return`` is the sum over agents of all rewards.

    Rewards are whatever the wrapped env returns: put this wrapper *inside*
    ``RewardScale`` (as :func:`make_wrapped` does) to record raw rewards.
    """

    def __init__(self, env: ParallelEnv) -> None:
        super().__init__(env)
        self.last_episode: dict[str, Any] | None = None
        self._agent_returns: dict[AgentID, float] = {}
        self._team_return: float = 0.0
        self._length: int = 0

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsDict, dict[AgentID, dict]]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self._agent_returns = {agent: 0.0 for agent in self.env.possible_agents}
        self._team_return = 0.0
        self._length = 0
        return obs, infos

    def step(self, actions: dict[AgentID, Any]) -> StepReturn:
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        self._length += 1
        for agent, r in rewards.items():
            r = float(r)
            self._agent_returns[agent] = self._agent_returns.get(agent, 0.0) + r
            self._team_return += r
        finished = [terminated.get(a, False) or truncated.get(a, False) for a in terminated]
        if not self.env.agents or (finished and all(finished)):
            record: dict[str, Any] = {
                "team_return": self._team_return,
                "agent_returns": dict(self._agent_returns),
                "length": self._length,
            }
            self.last_episode = record
            # Copy the per-agent info dicts: mpe2 hands out its internal ones,
            # and writing into them would leak the record into later steps.
            infos = {agent: dict(info) for agent, info in infos.items()}
            for info in infos.values():
                info["episode"] = record
        return obs, rewards, terminated, truncated, infos


def _is_identity(value: float, identity: float) -> bool:
    return float(value) == identity


def make_wrapped(
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    reward_scale: float = 1.0,
    obs_scale: float = 1.0,
    obs_offset: float = 0.0,
) -> ParallelEnv:
    """Make ``env_id`` and wrap it the way the trainer expects.

    Order, innermost first: ``EpisodeStatistics`` (records raw rewards), then
    ``ObservationAffine`` and ``RewardScale``, each only when not identity.
    """
    env: ParallelEnv = EpisodeStatistics(make(env_id, **(env_kwargs or {})))
    if not (_is_identity(obs_scale, 1.0) and _is_identity(obs_offset, 0.0)):
        env = ObservationAffine(env, obs_scale, obs_offset)
    if not _is_identity(reward_scale, 1.0):
        env = RewardScale(env, reward_scale)
    return env
