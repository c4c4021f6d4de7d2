"""Environments for marl-stability: mpe2/PettingZoo registry, wrappers and vectorisation."""

from marl_stability.envs.factory import make_vector_env, uses_fast_backend
from marl_stability.envs.fast_mpe import FastMPEParallelEnv, FastMPEVectorEnv
from marl_stability.envs.registry import EnvError, describe, list_env_ids, make
from marl_stability.envs.vector import (
    AgentLayout,
    NonFiniteActionError,
    StepResult,
    SyncVectorEnv,
    VectorAffine,
)
from marl_stability.envs.wrappers import (
    EpisodeStatistics,
    ObservationAffine,
    RewardScale,
    make_wrapped,
)

__all__ = [
    "AgentLayout",
    "FastMPEParallelEnv",
    "FastMPEVectorEnv",
    "VectorAffine",
    "make_vector_env",
    "uses_fast_backend",
    "EnvError",
    "EpisodeStatistics",
    "NonFiniteActionError",
    "ObservationAffine",
    "RewardScale",
    "StepResult",
    "SyncVectorEnv",
    "describe",
    "list_env_ids",
    "make",
    "make_wrapped",
]
