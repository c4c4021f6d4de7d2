"""Compatibility module: the batched scenarios now live in :mod:`envs.fast_mpe_tasks` (one module per task).

Re-exports the names this module used to define, so existing imports keep working.
"""

from __future__ import annotations

from marl_stability.envs.fast_mpe_tasks import TASKS, TaskSpec
from marl_stability.envs.fast_mpe_tasks.adversary import AdversaryScenario
from marl_stability.envs.fast_mpe_tasks.base import (
    CONTACT_FORCE,
    CONTACT_MARGIN,
    DAMPING,
    DIM_P,
    DT,
    MOVE_DIM,
    SENSITIVITY,
    Scenario,
    WorldState,
)
from marl_stability.envs.fast_mpe_tasks.collect_treasure import CollectTreasureScenario
from marl_stability.envs.fast_mpe_tasks.crypto import CryptoScenario
from marl_stability.envs.fast_mpe_tasks.formation import FormationScenario
from marl_stability.envs.fast_mpe_tasks.line import LineScenario
from marl_stability.envs.fast_mpe_tasks.push import PushScenario
from marl_stability.envs.fast_mpe_tasks.reference import ReferenceScenario
from marl_stability.envs.fast_mpe_tasks.simple import SimpleScenario
from marl_stability.envs.fast_mpe_tasks.speaker_listener import SpeakerListenerScenario
from marl_stability.envs.fast_mpe_tasks.spread import SpreadScenario
from marl_stability.envs.fast_mpe_tasks.tag import TagScenario
from marl_stability.envs.fast_mpe_tasks.world_comm import WorldCommScenario

__all__ = [
    "DIM_P", "DT", "DAMPING", "CONTACT_FORCE", "CONTACT_MARGIN", "SENSITIVITY", "MOVE_DIM", "WorldState",
    "Scenario", "TASKS", "TaskSpec", "SpreadScenario", "ReferenceScenario", "SpeakerListenerScenario",
    "SimpleScenario", "AdversaryScenario", "CryptoScenario", "PushScenario", "TagScenario", "WorldCommScenario",
    "FormationScenario", "LineScenario", "CollectTreasureScenario",
]
