"""Environment registry: resolve an env ID to a PettingZoo ``ParallelEnv``.

Two kinds of ID are accepted:

* an mpe2 task name such as ``"simple_spread_v3"`` (see :func:`list_env_ids`);
* an import path ``"package.module:callable"`` whose callable returns a
  ``ParallelEnv`` (for custom environments outside mpe2).

All user-facing failures are raised as :class:`EnvError` with a one-line
message, so a CLI can print them without a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import re
from functools import lru_cache
from typing import Any, Callable

from pettingzoo.utils.env import ParallelEnv

__all__ = ["EnvError", "list_env_ids", "make", "describe"]

# Modules in the mpe2 package that are not tasks.
_NON_TASK_MODULES = frozenset({"all_modules"})


class EnvError(ValueError):
    """Bad environment input (unknown ID, bad kwargs, unsupported spaces...).

    The message is always a single human-readable line.
    """


def _one_line(text: object) -> str:
    """Collapse any whitespace (including newlines) so messages stay on one line."""
    return " ".join(str(text).split())


@lru_cache(maxsize=1)
def _mpe2_ids() -> tuple[str, ...]:
    """Discover mpe2 task modules once; importing mpe2 is cheap but iterating is not free."""
    import mpe2

    names = (
        info.name
        for info in pkgutil.iter_modules(mpe2.__path__)
        if not info.name.startswith("_") and info.name not in _NON_TASK_MODULES
    )
    return tuple(sorted(names))


def list_env_ids() -> list[str]:
    """Return all mpe2 task IDs, sorted."""
    return list(_mpe2_ids())


def _accepted_kwargs(fn: Callable[..., Any]) -> list[str] | None:
    """Best-effort list of keyword names ``fn`` accepts (None if it cannot be told)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    names = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]
    return names


def _kwargs_error(env_id: str, exc: TypeError, hint_fn: Callable[..., Any] | None) -> EnvError:
    """Turn a TypeError raised while constructing an env into a readable EnvError."""
    msg = _one_line(exc)
    match = re.search(r"unexpected keyword argument '([^']+)'", msg)
    if match is None:
        return EnvError(f"invalid arguments for {env_id}: {msg}")
    accepted = _accepted_kwargs(hint_fn) if hint_fn is not None else None
    suffix = f" (accepted: {', '.join(accepted)})" if accepted else ""
    return EnvError(f"unknown keyword argument for {env_id}: {match.group(1)!r}{suffix}")


def _resolve_import_path(env_id: str) -> Callable[..., Any]:
    """Import ``package.module:attr[.attr...]`` and return the callable it names."""
    module_name, _, attr_path = env_id.partition(":")
    if not module_name or not attr_path:
        raise EnvError(f"malformed env id {env_id!r}: expected 'package.module:callable'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is a user input problem here
        raise EnvError(
            f"cannot import module {module_name!r} for env id {env_id!r}: {_one_line(exc)}"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise EnvError(
                f"module {module_name!r} has no attribute {attr_path!r} (env id {env_id!r})"
            ) from exc
    if not callable(obj):
        raise EnvError(f"{env_id!r} does not name a callable (got {type(obj).__name__})")
    return obj


def _resolve(env_id: str) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
    """Return (factory, function whose signature documents the kwargs)."""
    if ":" in env_id:
        factory = _resolve_import_path(env_id)
        return factory, factory
    ids = _mpe2_ids()
    if env_id not in ids:
        close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise EnvError(
            f"unknown env id {env_id!r}{hint} (run the 'envs' command for the full list,"
            " or use 'package.module:callable')"
        )
    module = importlib.import_module(f"mpe2.{env_id}")
    # mpe2 factories take **kwargs and forward them to raw_env, whose
    # signature is the useful one for error messages.
    return module.parallel_env, getattr(module, "raw_env", None)


def make(env_id: str, **kwargs: Any) -> ParallelEnv:
    """Build a ``ParallelEnv`` from an mpe2 ID or a ``module:callable`` path."""
    factory, hint_fn = _resolve(env_id)
    try:
        env = factory(**kwargs)
    except EnvError:
        raise
    except TypeError as exc:
        raise _kwargs_error(env_id, exc, hint_fn) from exc
    except (ValueError, AssertionError) as exc:
        # Constructors validate their kwargs with these (e.g. N=0).
        raise EnvError(f"cannot construct {env_id} with {kwargs!r}: {_one_line(exc)}") from exc
    if not isinstance(env, ParallelEnv):
        close = getattr(env, "close", None)
        if callable(close):
            close()
        raise EnvError(
            f"{env_id} returned {type(env).__module__}.{type(env).__qualname__},"
            " not a pettingzoo ParallelEnv"
        )
    return env


def describe(env_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Per-agent summary: ``name``, ``obs_shape`` and ``action_space`` (repr)."""
    env = make(env_id, **kwargs)
    try:
        return [
            {
                "name": str(agent),
                "obs_shape": tuple(env.observation_space(agent).shape or ()),
                "action_space": repr(env.action_space(agent)),
            }
            for agent in env.possible_agents
        ]
    finally:
        env.close()
