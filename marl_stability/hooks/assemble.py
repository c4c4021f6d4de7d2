"""Assembling a run's hooks: the built-in ones from config, then the user's (``train.hooks`` classes and hook
objects or classes passed to the trainer). Above :mod:`marl_stability.hooks.builtin`, below the training loop."""

from __future__ import annotations

import importlib
from typing import Any, Sequence

from marl_stability.core.hooks import EVENTS, Hook, RunContext
from marl_stability.errors import UserError
from marl_stability.hooks.builtin import DetectorHook, builtin_hooks
from marl_stability.hooks.control import NonFinitePolicy
from marl_stability.hooks.heal import HealHook


# --------------------------------------------------------------------------- users' hooks from config
# Module paths of this package's own hooks before 0.2.0's layout -> today's, so the config.yaml of an older run
# (which a resume must match) still loads.
LEGACY_HOOK_MODULES = {"marl_stability.example_hooks": "marl_stability.hooks.examples",
                       "marl_stability.builtin_hooks": "marl_stability.hooks.builtin",
                       "marl_stability.control_hooks": "marl_stability.hooks.control"}


def load_hook_class(spec: str) -> type:
    """``package.module:ClassName`` -> the class (a one-line error if it cannot be imported)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"train.hooks: {spec!r} is not module:Class")
    module_name = LEGACY_HOOK_MODULES.get(module_name, module_name)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 -- any import failure of a user's module is a user error
        raise UserError(f"train.hooks: cannot import {module_name} ({e.__class__.__name__}: {e})") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise UserError(f"train.hooks: {module_name} has no class {attr}")
    return cls


def build_hooks(ctx: RunContext, user_hooks: Sequence[Any] = ()) -> list[Hook]:
    """The run's hooks, built once: the built-in ones from config, then the user's (classes from
    ``train.hooks`` and hook objects or classes passed in). A class is called with the run context."""
    hooks = builtin_hooks(ctx)
    if ctx.cfg.train.heal.enabled:  # the healer takes the non-finite policy's place (it owns the same tags)
        detectors = next(h for h in hooks if isinstance(h, DetectorHook))
        hooks = [HealHook(ctx, detectors) if isinstance(h, NonFinitePolicy) else h for h in hooks]
    for item in [*(load_hook_class(s) for s in ctx.cfg.train.hooks), *user_hooks]:
        hook = _construct(item, ctx) if isinstance(item, type) else item
        if not hasattr(hook, "name") or not hook.name:
            hook.name = type(hook).__name__
        hooks.append(_complete(hook))
    return hooks


def _construct(cls: type, ctx: RunContext) -> Any:
    try:
        return cls(ctx)
    except Exception as e:  # noqa: BLE001 -- a user's hook that cannot be built is a one-line error
        raise UserError(f"hook {cls.__module__}:{cls.__name__} could not be built with the run context: "
                        f"{e.__class__.__name__}: {e}") from None


def _complete(hook: Any) -> Any:
    """A user's hook need not subclass Hook: give it the missing no-op methods."""
    if isinstance(hook, Hook):
        return hook
    for event in (*EVENTS, "summary", "state_dict", "load_state_dict"):
        if not hasattr(hook, event):
            setattr(hook, event, getattr(Hook(), event))
    if not hasattr(hook, "prefixes"):
        hook.prefixes = ()
    return hook
