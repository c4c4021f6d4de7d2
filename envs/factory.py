"""One entry point for the trainer: the batched vector env for a config, fast numpy port or PettingZoo."""

from __future__ import annotations

import functools
from typing import Any, Callable

from marl_stability.envs.fast_mpe import SUPPORTED_ENV_IDS, FastMPEVectorEnv
from marl_stability.envs.registry import EnvError
from marl_stability.envs.vector import SyncVectorEnv, VectorAffine
from marl_stability.envs.wrappers import make_wrapped


def uses_fast_backend(env_id: str, backend: str) -> bool:
    """auto: the numpy port for the tasks it implements, PettingZoo (mpe2 itself) for everything else."""
    if backend == "fast" and env_id not in SUPPORTED_ENV_IDS:
        raise EnvError(f"env.backend=fast supports {', '.join(SUPPORTED_ENV_IDS)}, not {env_id} (use auto or pettingzoo)")
    return backend == "fast" or (backend == "auto" and env_id in SUPPORTED_ENV_IDS)


def pettingzoo_env_fn(env_id: str, env_kwargs: dict[str, Any], reward_scale: float = 1.0, obs_scale: float = 1.0,
                      obs_offset: float = 0.0) -> Callable[[], Any]:
    return functools.partial(make_wrapped, env_id, dict(env_kwargs), reward_scale=reward_scale,
                             obs_scale=obs_scale, obs_offset=obs_offset)


def make_vector_env(env_id: str, env_kwargs: dict[str, Any], num_envs: int, seed: int, backend: str = "auto",
                    reward_scale: float = 1.0, obs_scale: float = 1.0, obs_offset: float = 0.0) -> Any:
    """A vector env exchanging ``[num_envs, num_agents, ...]`` arrays, with the failure-inducing transforms."""
    if uses_fast_backend(env_id, backend):
        venv: Any = FastMPEVectorEnv(env_id, dict(env_kwargs), num_envs, seed)
        if (reward_scale, obs_scale, obs_offset) != (1.0, 1.0, 0.0):
            venv = VectorAffine(venv, reward_scale, obs_scale, obs_offset)
        return venv
    return SyncVectorEnv(pettingzoo_env_fn(env_id, env_kwargs, reward_scale, obs_scale, obs_offset), num_envs, seed,
                         name=env_id)
