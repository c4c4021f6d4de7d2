"""The hook interface: everything that watches a run is a hook, built once from config by
:func:`marl_stability.hooks.assemble.build_hooks`; the built-in hooks live in :mod:`marl_stability.hooks`.

A hook is a class with the event methods of :class:`Hook` (all optional) and a tuple ``prefixes`` of the
TensorBoard tag prefixes it owns. Every tag has exactly one owner: start-up fails when two hooks claim
overlapping prefixes, and a hook that writes a tag outside its prefixes gets an error at the first write.
Hooks are called in list order (built-in hooks first, then the user's), so a later hook can read what an
earlier one derived from the same event (``EvaluationEvent.derived``).

A user's hook is such a class (``marl_stability/hooks/examples.py`` has one that ends a run whose actions
stay saturated), listed in config as ``train.hooks: [package.module:Class]`` or passed as
``Trainer(..., hooks=[...])``; a class is called with the run's :class:`RunContext`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from marl_stability.core.events import (
    EnvStepEvent,
    EpisodesEvent,
    EvaluationEvent,
    GradEvent,
    NonFiniteEvent,
    UpdateEvent,
)
from marl_stability.errors import UserError

if TYPE_CHECKING:
    from marl_stability.config import RunConfig
    from marl_stability.core.sinks import Logger
    from marl_stability.core.summary import RunSummary

BUILTIN_MODULES = ("marl_stability.hooks.builtin", "marl_stability.hooks.control", "marl_stability.hooks.engagement",
                   "marl_stability.hooks.heal")
EVENTS = ("on_start", "after_backward", "after_clip", "after_step", "on_env_step", "on_update", "on_episodes",
          "on_evaluation", "on_nonfinite", "before_checkpoint", "on_end")


class Hook:
    """Base class of hooks: every event method is a no-op; override the ones you need.

    ``name`` keys the hook's state in checkpoints (``state_dict``/``load_state_dict``: plain Python or
    tensors, so a resumed run continues exactly); ``summary()`` adds fields to ``summary.json``.
    """

    name: str = ""
    prefixes: tuple[str, ...] = ()

    def __init__(self, ctx: Optional["RunContext"] = None) -> None:
        """Keep the run context (``self.ctx``) and a logger limited to this hook's prefixes (``self.log``)."""
        self.ctx = ctx
        self.log = ctx.scoped(self) if ctx is not None else None

    def on_start(self, resumed: bool) -> None: ...
    def after_backward(self, ev: GradEvent) -> None: ...
    def after_clip(self, ev: GradEvent) -> None: ...
    def after_step(self, ev: GradEvent) -> None: ...
    def on_env_step(self, ev: EnvStepEvent) -> None: ...
    def on_update(self, ev: UpdateEvent) -> None: ...
    def on_episodes(self, ev: EpisodesEvent) -> None: ...
    def on_evaluation(self, ev: EvaluationEvent) -> None: ...
    def on_nonfinite(self, ev: NonFiniteEvent) -> None: ...
    def before_checkpoint(self) -> None: ...
    def on_end(self, summary: "RunSummary") -> None: ...

    def summary(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class TagOwnershipError(RuntimeError):
    """A hook wrote a tag outside the prefixes it declared (a bug in that hook)."""


class ScopedLog:
    """A hook's view of the run's logger: writes only tags under the hook's own prefixes.

    The ownership test runs once per distinct tag (a set lookup afterwards), so it costs nothing per write.
    """

    def __init__(self, logger: "Logger", owner: str, prefixes: Sequence[str]) -> None:
        self._logger, self.owner, self.prefixes = logger, owner, tuple(prefixes)
        self._checked: set[str] = set()

    def _check(self, tag: str) -> None:
        if tag in self._checked:
            return
        if not tag.startswith(self.prefixes):
            raise TagOwnershipError(f"hook {self.owner!r} wrote {tag!r}, outside its prefixes {self.prefixes}")
        self._checked.add(tag)

    def record(self, tag: str, value: float, step: int) -> None:
        self._check(tag)
        self._logger.record(tag, value, step)

    def record_dict(self, values: dict[str, float], step: int) -> None:
        for tag in values:
            self._check(tag)
        self._logger.record_dict(values, step)

    def histogram(self, tag: str, values: Any, step: int) -> None:
        self._check(tag)
        self._logger.histogram(tag, values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self._check(tag)
        self._logger.text(tag, text, step)


@dataclass
class RunContext:
    """What a hook may know about the run. ``env_steps`` is the loop's clock; ``stop`` ends the run."""

    cfg: "RunConfig"
    run_dir: Path
    layout: Any  # marl_stability.envs.vector.AgentLayout
    algorithm: Any  # marl_stability.agents.base.Algorithm
    logger: "Logger"
    quiet: bool = False
    env_steps: int = 0
    status: str = "running"
    stop_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self, status: str, reason: str = "") -> None:
        """End the run after the current event: ``interrupted`` (resumable: checkpoint and summary written) or
        ``diverged`` (final). The reason goes into the run's summary text."""
        if status not in ("interrupted", "diverged"):
            raise ValueError(f"ctx.stop: status must be interrupted or diverged, not {status!r}")
        if self.status == "running":
            self.status, self.stop_reason = status, reason

    def scoped(self, hook: Hook) -> ScopedLog:
        return ScopedLog(self.logger, hook.name or type(hook).__name__, hook.prefixes)


def check_claims(hooks: Sequence[Hook]) -> None:
    """Every tag prefix has one owner: no two hooks may claim the same or nested prefixes; names are unique."""
    names: dict[str, Hook] = {}
    for h in hooks:
        if isinstance(h.prefixes, str) or not all(isinstance(p, str) and p for p in h.prefixes):
            raise UserError(f"hook {type(h).__name__}: prefixes must be a tuple of non-empty strings, "
                            f"not {h.prefixes!r}")
        if not h.name:
            raise UserError(f"hook {type(h).__name__} has no name")
        if h.name in names:
            raise UserError(f"two hooks are named {h.name!r} ({type(names[h.name]).__name__}, {type(h).__name__})")
        names[h.name] = h
    claims = [(p, h) for h in hooks for p in h.prefixes]
    for i, (p, h) in enumerate(claims):
        for q, g in claims[i + 1:]:
            if p.startswith(q) or q.startswith(p):
                raise UserError(f"hooks {h.name!r} and {g.name!r} both claim TensorBoard tags under {min(p, q)!r}")


class HookBus:
    """Dispatches each event to every hook that overrides it (in order); ``bus.after_clip(ev)`` etc."""

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.install(hooks)

    def install(self, hooks: Sequence[Hook]) -> None:
        """Set the hooks (once per run: the algorithm holds this bus from its construction on)."""
        check_claims(hooks)
        self.hooks = list(hooks)
        for event in EVENTS:
            # Only hooks that override an event are called for it: a per-step event costs nothing otherwise.
            overriding = [getattr(h, event) for h in self.hooks if getattr(type(h), event, None) is not getattr(Hook, event)]
            setattr(self, event, _fanout(overriding))

    def summary(self) -> dict[str, Any]:
        """The built-in hooks' summary fields, plus ``hooks``: each user hook's own fields under its name (so
        a user's hook can never overwrite a field of the run)."""
        out: dict[str, Any] = {"hooks": {}}
        for h in self.hooks:
            fields = h.summary()
            if type(h).__module__ in BUILTIN_MODULES:
                out.update(fields)
            elif fields:
                out["hooks"][h.name] = dict(fields)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {h.name: h.state_dict() for h in self.hooks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for h in self.hooks:
            if h.name in state:
                h.load_state_dict(state[h.name])

    def find(self, kind: type) -> Any:
        """The first hook of this type (None if absent)."""
        return next((h for h in self.hooks if isinstance(h, kind)), None)


def _fanout(methods: list[Callable[..., None]]) -> Callable[..., None]:
    if not methods:
        return lambda *args: None
    if len(methods) == 1:
        return methods[0]

    def call(*args: Any) -> None:
        for m in methods:
            m(*args)

    return call


class NullBus:
    """The events sink of an algorithm used outside a run (tests, rendering): every event is dropped."""

    def __getattr__(self, event: str) -> Callable[..., None]:
        if event in EVENTS:
            return lambda *args: None
        raise AttributeError(event)
