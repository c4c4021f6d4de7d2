"""Algorithms (each an ``marl_stability.agents.base.Algorithm``) and their pieces: networks, replay buffer, optimizers."""

from __future__ import annotations

import importlib
from typing import Any

from marl_stability.agents.base import Algorithm, NonFiniteParameters
from marl_stability.agents.buffer import ReplayBuffer
from marl_stability.agents.maddpg import MADDPG, AgentSpec
from marl_stability.agents.mappo import IPPO, MAPPO
from marl_stability.agents.matd3 import MATD3

from marl_stability.errors import UserError

ALGORITHMS: dict[str, type[Algorithm]] = {"maddpg": MADDPG, "matd3": MATD3, "mappo": MAPPO, "ippo": IPPO}


def algorithm_class(name: str) -> type[Algorithm]:
    """A built-in algorithm by name, or a user's ``package.module:Class`` implementing ``Algorithm``."""
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    module_name, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as e:  # noqa: BLE001 -- any failure to import a user's module is a user error
        raise UserError(f"algo={name}: cannot import it ({e.__class__.__name__}: {e})") from None
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise UserError(f"algo={name} is not a subclass of marl_stability.agents.base.Algorithm")
    return cls


def make(cfg: Any, spec: AgentSpec, fixes: Any, events: Any = None) -> Algorithm:
    """Build the algorithm named by ``cfg.algo`` (``events``: the run's hook bus; None drops events)."""
    return algorithm_class(cfg.algo)(cfg, spec, fixes, events)


__all__ = ["Algorithm", "MADDPG", "MATD3", "MAPPO", "IPPO", "AgentSpec", "NonFiniteParameters", "ReplayBuffer", "make", "ALGORITHMS",
           "algorithm_class"]
