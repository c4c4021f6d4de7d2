"""The algorithm interface: all the training loop knows about an algorithm.

An algorithm is built from the run config, the agents' layout (names, sizes, bounds) and the fixes, and
holds the run's event bus: its gradient steps emit ``after_backward`` / ``after_clip`` / ``after_step``
(``self.stepper``, a ``marl_stability.agents.optim.GradientStepper``, does that once for every algorithm). The loop

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

The base class carries the duties every algorithm shares, so a subclass cannot forget them: ``update()`` (not
overridable) counts the update, starts the stepper's record, runs the subclass's ``learn()`` (one update: every
gradient step through ``self.stepper``, returning its scalars), refuses an optimizer step taken outside the
stepper (``StepperBypassed``), checks every parameter of ``modules()`` for NaN/Inf (``NonFiniteParameters``)
and returns the ``UpdateStats``. Capabilities are class attributes: ``on_policy`` (learns from rollouts of its
current policy: the plasticity metrics run every update, the on-policy fixes and doctor's on-policy diagnosis
apply) and ``hyperparameters`` (the config section holding its ``gamma``: ``"ppo"`` when on-policy, else
``"maddpg"``, unless set).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import numpy as np
import torch

from marl_stability.agents.optim import GradientStepper, all_finite, nonfinite_evidence, optimizer_guard
from marl_stability.core.events import UpdateStats
from marl_stability.core.hooks import NullBus

if TYPE_CHECKING:
    from marl_stability.core.plasticity import FeatureProbe


class NonFiniteParameters(RuntimeError):
    """A parameter became NaN/Inf after an optimizer step: the run cannot continue as is."""

    def __init__(self, message: str, evidence: Optional[dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.evidence = evidence


class StepperBypassed(RuntimeError):
    """An optimizer stepped inside ``update()`` without the gradient stepper: gradient statistics, detectors and
    clipping would silently miss that step."""


# Scalars the base class adds to every update's (their prefixes are added to each subclass's stat_prefixes).
BASE_STATS = ("health/nonfinite_updates", "reward/learner_scale")


class Algorithm(ABC):
    """Base class of the algorithms (``agents.ALGORITHMS``)."""

    #: the config name (``algo: ...``)
    name: ClassVar[str] = ""
    #: TensorBoard tag prefixes of the scalars ``learn()`` returns (owned by the ``update_stats`` hook);
    #: the base class's own (:data:`BASE_STATS`) are added
    stat_prefixes: ClassVar[tuple[str, ...]] = ()
    #: learns from rollouts of its current policy (MAPPO, IPPO), not from a replay buffer
    on_policy: ClassVar[bool] = False
    #: config section of its hyperparameters, ``gamma`` included ("" = "ppo" when on_policy, else "maddpg")
    hyperparameters: ClassVar[str] = ""
    #: ``state_dict`` keys that only a resume needs (experience data such as a replay buffer): a finished run's
    #: final checkpoint (``train.checkpoints: final``) leaves them out, so ``load_state_dict`` must accept a
    #: state without them (and leave that part empty)
    resume_only: ClassVar[tuple[str, ...]] = ()

    #: config keys (dotted; a key ending in ``.`` covers every key below it) that :meth:`reconfigure` can adopt in
    #: a running algorithm, besides the ``fixes.`` section that the fix objects carry (clipping, reward and
    #: observation normalization, the pre-activation penalty): what ``train.heal`` may change mid-run. () = none
    live_keys: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "update" in cls.__dict__:
            raise TypeError(f"{cls.__name__} overrides update(): implement learn() instead (update() counts the "
                            "update, checks the parameters and refuses steps that bypass self.stepper)")
        cls.stat_prefixes = tuple(dict.fromkeys((*cls.stat_prefixes, *BASE_STATS)))

    def __init__(self, cfg: Any, layout: Any, fixes: Any, events: Any = None) -> None:
        self.cfg, self.spec, self.fixes = cfg, layout, fixes
        self.events = events if events is not None else NullBus()
        self.updates = 0
        self.stepper = GradientStepper(self.events, {})
        self._checked: Optional[list[torch.Tensor]] = None

    @classmethod
    def config_section(cls) -> str:
        return cls.hyperparameters or ("ppo" if cls.on_policy else "maddpg")

    @classmethod
    def discount(cls, cfg: Any) -> float:
        """The discount of this algorithm's returns under ``cfg`` (the reward normalizer accumulates with it)."""
        return float(getattr(cfg, cls.config_section()).gamma)

    @property
    def gamma(self) -> float:
        """The discount of the learner's returns (the evaluation's value check discounts with it)."""
        return self.discount(self.cfg)

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
    def learn(self) -> dict[str, float]:
        """One update: every gradient step through ``self.stepper.step(loss, optimizer, params, clipper, model)``
        (``model`` a name from ``modules()``); optionally ``self.stepper.use_batch(batch)`` first, so a non-finite
        step's evidence holds the batch. Returns the update's scalars (tags under ``stat_prefixes``)."""

    def update(self) -> UpdateStats:
        """One update (the loop calls this): counts it, runs ``learn()``, refuses optimizer steps that bypassed
        the stepper, raises ``NonFiniteParameters`` when a parameter became NaN/Inf."""
        self.updates += 1
        if not self.stepper.modules:
            self.stepper.modules = self.modules()
        self.stepper.begin(self.updates, {})
        with optimizer_guard() as guard:
            scalars = self.learn()
        if guard.bypassed:
            raise StepperBypassed(f"{type(self).__name__}.learn() stepped an optimizer {guard.bypassed} time(s) "
                                  "without self.stepper: take every gradient step through self.stepper.step(...)")
        if self._checked is None:
            self._checked = [p for m in self.modules().values() for p in m.parameters()]
        if not all_finite(self._checked):
            evidence = self.stepper.evidence or nonfinite_evidence(self.stepper.modules, self.updates, "all", "parameters",
                                                                   torch.tensor(float("nan")), self.stepper.batch)
            raise NonFiniteParameters(f"non-finite parameters after update {self.updates}", evidence)
        self.finish_update()
        scalars["health/nonfinite_updates"] = float(self.stepper.nonfinite)
        scalars["reward/learner_scale"] = self.fixes.reward.scale()
        return self.stepper.result(scalars)

    def finish_update(self) -> None:
        """After ``learn()``, once every parameter is known to be finite (MADDPG: the soft target updates; PPO:
        a new rollout). Nothing by default."""

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

    def reconfigure(self, cfg: Any, changed: list[str]) -> None:
        """Adopt ``cfg`` while running (``train.heal`` applying a fix): ``changed`` are the dotted keys that differ
        from the current config, each covered by :attr:`live_keys`. An algorithm without ``live_keys`` is never
        asked; it can still be healed with the fixes the fix objects carry."""
        raise NotImplementedError(f"{type(self).__name__} declares live_keys but does not implement reconfigure()")

    def branch(self, seed: int) -> None:
        """Right after another run's checkpoint was loaded into this one (``train.start_from``): take ``seed``'s
        random streams, and :meth:`restart_episodes` (the envs restart). Default: ``self.gen`` (a
        ``torch.Generator``) and ``self.rng`` (a numpy ``Generator``), where they exist, reseeded as the built-in
        algorithms seed them (seed + 1, seed + 2); without either the checkpoint's streams go on."""
        if isinstance(getattr(self, "gen", None), torch.Generator):
            self.gen.manual_seed(seed + 1)
        if isinstance(getattr(self, "rng", None), np.random.Generator):
            self.rng.bit_generator.state = np.random.default_rng(seed + 2).bit_generator.state
        self.restart_episodes()

    def restart_episodes(self) -> None:
        """The env copies restart and their episodes in progress do not go on: drop what is tied to them (an
        on-policy rollout). Nothing by default: a replay buffer's transitions are whole."""

    def data_mark(self) -> Any:
        """Where the experience collected from now on starts, for :meth:`rewind_data`. Default: the mark of
        ``self.buffer`` when the algorithm has one with ``mark()``/``rewind()`` (``agents.buffer.ReplayBuffer``),
        else None (nothing to rewind)."""
        buffer = getattr(self, "buffer", None)
        return buffer.mark() if hasattr(buffer, "mark") and hasattr(buffer, "rewind") else None

    def rewind_data(self, mark: Any) -> str:
        """Drop the experience collected since ``mark`` (``train.heal`` rolling back); returns what was done, in
        words ("" for nothing)."""
        return self.buffer.rewind(mark) if mark is not None else ""  # type: ignore[attr-defined]

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """In-memory copy of what a rollback restores (networks and optimizers)."""

    @abstractmethod
    def restore(self, snap: dict[str, Any]) -> None: ...
