"""Environments for marl-stability: mpe2/PettingZoo registry, wrappers and vectorisation."""

from envs.registry import EnvError, describe, list_env_ids, make
from envs.vector import AgentLayout, NonFiniteActionError, StepResult, SyncVectorEnv, VectorAffine
from envs.fast_mpe import FastMPEParallelEnv, FastMPEVectorEnv
from envs.factory import make_vector_env, uses_fast_backend
from envs.wrappers import EpisodeStatistics, ObservationAffine, RewardScale, make_wrapped

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
