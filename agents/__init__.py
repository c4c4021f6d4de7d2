"""Algorithms (each an ``agents.base.Algorithm``) and their pieces: networks, replay buffer, optimizers."""

from __future__ import annotations

from typing import Any

from agents.base import Algorithm, NonFiniteParameters
from agents.buffer import ReplayBuffer
from agents.maddpg import MADDPG, AgentSpec
from agents.matd3 import MATD3

ALGORITHMS: dict[str, type[Algorithm]] = {"maddpg": MADDPG, "matd3": MATD3}


def algorithm_class(name: str) -> type[Algorithm]:
    return ALGORITHMS[name]


def make(cfg: Any, spec: AgentSpec, fixes: Any, events: Any = None) -> Algorithm:
    """Build the algorithm named by ``cfg.algo`` (``events``: the run's hook bus; None drops events)."""
    return ALGORITHMS[cfg.algo](cfg, spec, fixes, events)


__all__ = ["Algorithm", "MADDPG", "MATD3", "AgentSpec", "NonFiniteParameters", "ReplayBuffer", "make", "ALGORITHMS",
           "algorithm_class"]
