"""What the training loop and the algorithms emit, each exactly once, and hooks receive.

An event is a small record. Gradient events carry the one measurement of a network's gradients that the
clipper used (``fixes.GradNorms``), so logs, detectors and clipping agree on the same numbers.

=================  =====================================  ==========================================
event              emitted by                             when
=================  =====================================  ==========================================
``on_start``       loop                                   once, after env/algorithm/hooks are built
``after_backward`` algorithm (``GradientStepper``)           a network's gradients exist, before clipping
``after_clip``     algorithm                              gradients clipped (finite ones only)
``after_step``     algorithm                              optimizer step taken
``on_env_step``    loop                                   one batched env step (actions taken)
``on_update``      loop                                   ``algorithm.update()`` returned its stats
``on_episodes``    loop                                   some env copies finished an episode
``on_evaluation``  loop                                   an evaluation's raw samples are in
``on_nonfinite``   loop                                   a NaN/Inf action, loss, gradient or parameter
``before_checkpoint`` loop                                state is about to be saved
``on_end``         loop                                   the run ends (any status)
=================  =====================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:  # no torch import at module load for readers of these records
    from marl_stability.fixes.objects import ClipStats, GradNorms


@dataclass
class GradEvent:
    """One network's gradient step inside one update (``model`` e.g. ``"critic/agent_0"``)."""

    model: str
    update: int  # the algorithm's update counter (1-based) this step belongs to
    norms: "GradNorms"  # the pre-clip measurement (per tensor and global)
    clip: Optional["ClipStats"] = None  # set from after_clip on
    finite: bool = True  # False: the gradient held NaN/Inf and the step was skipped

    @property
    def kind(self) -> str:
        """The network kind: the first part of the model name (``critic``, ``actor``, ``critic2``, ...)."""
        return self.model.split("/", 1)[0]


@dataclass
class UpdateStats:
    """What one ``algorithm.update()`` returns: scalars to log (tags under the algorithm's declared
    prefixes), how many of its gradient steps were skipped as non-finite (with the first one's evidence),
    and its measured gradient steps (``GradientStepper.result`` fills all but the scalars). Hooks that count
    completed updates (peak norms, the explosion detector, forensics) read the steps here: an update that
    raised never reaches ``on_update``, so its norms are never counted."""

    scalars: dict[str, float]
    nonfinite: int = 0
    evidence: Optional[dict[str, Any]] = None
    steps: list[GradEvent] = field(default_factory=list)


@dataclass
class UpdateEvent:
    update: int
    stats: UpdateStats


@dataclass
class EnvStepEvent:
    actions: np.ndarray  # [num_envs, num_agents, max_act_dim] as sent to the env


@dataclass
class EpisodesEvent:
    episodes: list[dict[str, Any]]  # per finished episode: team_return, agent_returns, length, env_index


@dataclass
class EvaluationEvent:
    """Raw samples of one evaluation (noise-free policy on fresh env copies); hooks derive every metric.

    ``observed``/``taken``: per env step, arrays ``[n, num_agents, ...]``; ``counted[t]`` marks the rows whose
    step t and t-1 lie in the same (first) episode, i.e. the consecutive pairs that count for repetition.
    ``value_initial``/``value_return``: the algorithm's value estimate at the first state and the discounted
    learner return observed from it, per agent (None when the algorithm has no value estimate).
    Hooks earlier in the list may attach derived results under ``derived`` for later ones (e.g. the action
    statistics the detectors read).
    """

    index: int
    episodes: list[dict[str, Any]]
    observed: list[np.ndarray]
    taken: list[np.ndarray]
    counted: list[np.ndarray]
    value_initial: Optional[np.ndarray] = None
    value_return: Optional[np.ndarray] = None
    derived: dict[str, Any] = field(default_factory=dict)

    @property
    def team_return(self) -> float:
        return float(np.mean([e["team_return"] for e in self.episodes]))


@dataclass
class NonFiniteEvent:
    count: int
    reason: str
    fatal: bool  # the run cannot go on as is (a parameter or an action is NaN/Inf)
    evidence: Optional[dict[str, Any]] = None  # batch, parameters, gradients of the first occurrence
