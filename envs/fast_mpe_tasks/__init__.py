"""Every mpe2 task as a batched scenario for :class:`marl_stability.envs.fast_mpe.FastMPEVectorEnv`: one module per task,
shared pieces in :mod:`envs.fast_mpe_tasks.base`. :data:`TASKS` maps each env id to its kwargs (with
mpe2's defaults) and its scenario builder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from marl_stability.envs.fast_mpe_tasks.adversary import AdversaryScenario
from marl_stability.envs.fast_mpe_tasks.base import Scenario
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

__all__ = ["TaskSpec", "TASKS"]

_COMMON = {"max_cycles": 25, "continuous_actions": False, "dynamic_rescaling": True}
_NO_PARTIAL_OBS = {"num_agent_neighbors": None, "num_landmark_neighbors": None}


@dataclass(frozen=True)
class TaskSpec:
    """One task's kwargs: ``params`` (ported, with mpe2's defaults), ``int_min`` (the integer ones and their
    minimum), ``int_max`` (upper bounds mpe2 enforces), ``ratios`` (proportions in [0, 1]), ``flags``
    (booleans), ``default_only`` (accepted at mpe2's default only) and the scenario builder, called with
    the validated kwargs."""

    params: dict[str, Any]
    build: Callable[[dict[str, Any]], Scenario]
    int_min: dict[str, int]
    ratios: tuple[str, ...] = ()
    default_only: dict[str, Any] | None = None
    int_max: dict[str, int] | None = None
    flags: tuple[str, ...] = ()  # task-specific booleans


def _spec(params: dict[str, Any], build: Callable[[dict[str, Any]], Scenario], int_min: dict[str, int] | None = None,
          ratios: tuple[str, ...] = (), default_only: dict[str, Any] | None = None,
          int_max: dict[str, int] | None = None, flags: tuple[str, ...] = ()) -> TaskSpec:
    return TaskSpec({**params, **_COMMON}, build, {"max_cycles": 1, **(int_min or {})}, ratios,
                    {"render_mode": None, "benchmark_data": False, **(default_only or {})}, int_max, flags)


TASKS: dict[str, TaskSpec] = {
    "simple_spread_v3": _spec(
        {"N": 3, "local_ratio": 0.5, "terminate_on_success": False},
        lambda k: SpreadScenario(k["N"], k["local_ratio"], k["terminate_on_success"]), {"N": 1}, ("local_ratio",),
        {"curriculum": False, **_NO_PARTIAL_OBS}, flags=("terminate_on_success",)),
    "simple_reference_v3": _spec(
        {"local_ratio": 0.5}, lambda k: ReferenceScenario(k["local_ratio"]), ratios=("local_ratio",)),
    "simple_speaker_listener_v4": _spec({}, lambda k: SpeakerListenerScenario()),
    "simple_v3": _spec({}, lambda k: SimpleScenario()),
    "simple_adversary_v3": _spec({"N": 2}, lambda k: AdversaryScenario(k["N"]), {"N": 1},
                                 default_only=_NO_PARTIAL_OBS),
    "simple_crypto_v3": _spec({}, lambda k: CryptoScenario()),
    "simple_push_v3": _spec({}, lambda k: PushScenario()),
    "simple_tag_v3": _spec(
        {"num_good": 1, "num_adversaries": 3, "num_obstacles": 2, "terminate_on_success": False},
        lambda k: TagScenario(k["num_good"], k["num_adversaries"], k["num_obstacles"], k["terminate_on_success"]),
        {"num_good": 1, "num_adversaries": 1, "num_obstacles": 0},
        default_only={"curriculum": False, **_NO_PARTIAL_OBS}, flags=("terminate_on_success",)),
    "simple_world_comm_v3": _spec(
        {"num_good": 2, "num_adversaries": 4, "num_obstacles": 1, "num_food": 2, "num_forests": 2},
        lambda k: WorldCommScenario(k["num_good"], k["num_adversaries"], k["num_obstacles"], k["num_food"],
                                    k["num_forests"]),
        {"num_good": 1, "num_adversaries": 1, "num_obstacles": 0, "num_food": 1, "num_forests": 0}),
    "simple_formation_v1": _spec({"N": 4, "terminate_on_success": False},
                                 lambda k: FormationScenario(k["N"], k["terminate_on_success"]), {"N": 1},
                                 flags=("terminate_on_success",)),
    "simple_line_v1": _spec({"N": 4, "terminate_on_success": False},
                            lambda k: LineScenario(k["N"], k["terminate_on_success"]), {"N": 1},
                            flags=("terminate_on_success",)),
    "collect_treasure_v1": _spec(
        {"num_collectors": 6, "num_deposits": 2, "num_treasures": 6},
        lambda k: CollectTreasureScenario(k["num_collectors"], k["num_deposits"], k["num_treasures"]),
        {"num_collectors": 1, "num_deposits": 1, "num_treasures": 1},
        int_max={"num_deposits": 6}),  # mpe2's colour palette has 6 treasure types
}
