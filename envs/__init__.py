"""Environments for marl-stability: mpe2/PettingZoo registry, wrappers and vectorisation."""

from envs.registry import EnvError, describe, list_env_ids, make
from envs.vector import AgentLayout, NonFiniteActionError, StepResult, SyncVectorEnv
from envs.wrappers import EpisodeStatistics, ObservationAffine, RewardScale, make_wrapped

__all__ = [
    "AgentLayout",
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
