"""Algorithms and their pieces: networks, replay buffer, MADDPG."""

from __future__ import annotations

from agents.buffer import ReplayBuffer
from agents.maddpg import MADDPG, AgentSpec, NonFiniteParameters

ALGORITHMS = {"maddpg": MADDPG}


def make(cfg, spec: AgentSpec, fixes):  # type: ignore[no-untyped-def]
    """Build the algorithm named by ``cfg.algo``."""
    return ALGORITHMS[cfg.algo](cfg, spec, fixes)


__all__ = ["MADDPG", "AgentSpec", "NonFiniteParameters", "ReplayBuffer", "make", "ALGORITHMS"]
