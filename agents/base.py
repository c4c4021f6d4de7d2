"""The algorithm interface: all the training loop knows about an algorithm.

An algorithm is built from the run config, the agents' layout (names, sizes, bounds) and the fixes, and
holds the run's event bus: its gradient steps emit ``after_backward`` / ``after_clip`` / ``after_step``
(``marl_stability.agents.optim.GradientStepper`` does that once for every algorithm). The loop

1. asks for actions (``act``, exploring or greedy) for a batch of env copies ``[E, N, obs]``,
2. hands back each batch of transitions (``observe``),
3. asks how many updates are due now (``pending_updates``: an off-policy learner answers from its
   update-to-data ratio, an on-policy one answers 1 when its rollout is full and then starts a new one),
4. calls ``update()`` that many times; each returns an ``UpdateStats`` record,

and for evaluation and instrumentation uses ``policy_fn``/``preactivations`` (per agent), ``value_estimates``
(the value at a batch of states, for the value check) and ``modules`` (the networks, by name). Replay
buffers, rollouts, epochs and minibatches stay inside the algorithm. ``state_dict``/``load_state_dict``
make resume exact (networks, optimizers, buffers, RNGs, counters); ``snapshot``/``restore`` are the
in-memory copies a rollback uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import numpy as np
import torch

from marl_stability.core.events import UpdateStats
from marl_stability.core.hooks import NullBus

if TYPE_CHECKING:
    from marl_stability.core.plasticity import FeatureProbe


class NonFiniteParameters(RuntimeError):
    """A parameter became NaN/Inf after an optimizer step: the run cannot continue as is."""

    def __init__(self, message: str, evidence: Optional[dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.evidence = evidence


class Algorithm(ABC):
    """Base class of the algorithms (``agents.ALGORITHMS``)."""

    #: the config name (``algo: ...``)
    name: ClassVar[str] = ""
    #: TensorBoard tag prefixes of the scalars ``update()`` returns (owned by the ``update_stats`` hook)
    stat_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any, layout: Any, fixes: Any, events: Any = None) -> None:
        self.cfg, self.spec, self.fixes = cfg, layout, fixes
        self.events = events if events is not None else NullBus()
        self.updates = 0

    @property
    def gamma(self) -> float:
        """The discount of the learner's returns (the evaluation's value check discounts with it)."""
        return float(self.cfg.maddpg.gamma)

    @classmethod
    def check_layout(cls, cfg: Any, layout: Any) -> None:
        """Raise ``UserError`` when this algorithm cannot train these agents with this config."""

    # ------------------------------------------------------------------ acting and data
    @abstractmethod
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Actions ``[E, N, max_act_dim]`` for observations ``[E, N, max_obs_dim]`` (discrete: one-hot)."""

    @abstractmethod
    def observe(self, obs: np.ndarray, actions: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
                terminated: np.ndarray, done: np.ndarray) -> None:
        """One batch of transitions (``done`` = terminated or truncated: the env copy was reset)."""

    @abstractmethod
    def pending_updates(self) -> int:
        """How many ``update()`` calls are due now (counting them as asked)."""

    @abstractmethod
    def update(self) -> UpdateStats:
        """One update; raises ``NonFiniteParameters`` when a parameter became NaN/Inf."""

    # ------------------------------------------------------------------ evaluation and instrumentation
    @abstractmethod
    def modules(self) -> dict[str, torch.nn.Module]:
        """The trained networks by name (``"actor/agent_0"``, ``"critic/agent_0"``); the names of the
        gradient events."""

    @abstractmethod
    def policy_fn(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Agent i's deterministic policy: raw observations [B, obs_dim_i] -> the action the env applies
        (continuous: within the bounds; discrete: probabilities), differentiable in the observation."""

    @abstractmethod
    def preactivations(self, i: int, obs_i: torch.Tensor) -> torch.Tensor:
        """Agent i's output-layer pre-activations at raw observations [B, obs_dim_i]."""

    def value_estimates(self, obs: np.ndarray) -> Optional[np.ndarray]:
        """Each agent's value estimate [B, N] at joint observations [B, N, D] (None: no value to check)."""
        return None

    def feature_probes(self, max_rows: int) -> list["FeatureProbe"]:
        """Every trained network with the inputs it saw in the last update (the states trained on, at most
        ``max_rows`` of them, evenly spaced), for the plasticity metrics (``marl_stability.core.plasticity``; the
        ``plasticity`` hook calls this right after ``update()``). Names as in ``modules()``, a second critic of
        the same agent as ``critic2/<agent>``. [] (the default): nothing to measure."""
        return []

    # ------------------------------------------------------------------ state
    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def _inject_nonfinite(self) -> bool:
        """Test hook (``debug.inject_nonfinite_at_update`` / ``_count``): whether this update gets a NaN."""
        dbg = self.cfg.debug
        return dbg.inject_nonfinite_at_update is not None and self.updates >= dbg.inject_nonfinite_at_update and (
            dbg.inject_nonfinite_count is None or self.updates < dbg.inject_nonfinite_at_update + dbg.inject_nonfinite_count)

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """In-memory copy of what a rollback restores (networks and optimizers)."""

    @abstractmethod
    def restore(self, snap: dict[str, Any]) -> None: ...
