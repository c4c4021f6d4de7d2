"""Changing a running run's config: what ``train.heal`` does when it applies a fix mid-run.

The fix objects (``marl_stability.fixes.objects``: the clippers, the observation and reward transforms, the
pre-activation penalty) are rebuilt where their ``fixes.`` section changed -- in place in the run's one
``Fixes`` object, which the algorithm, the evaluation and the hooks share; a normalizer switched on starts from the
statistics its shadow kept (``fixes.objects.Shadowed``, built while ``train.heal`` is on). Every other changed key must be one the algorithm declares in ``live_keys``; it adopts those in
``reconfigure`` (optimizers, output heads, loss settings). A key neither covers cannot change mid-run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marl_stability.config import RunConfig, apply_override, build_config, config_diff
from marl_stability.core.checkpoint import saved_config
from marl_stability.errors import UserError
from marl_stability.fixes.objects import build_fixes, switched_on

# The ``Fixes`` field each ``fixes.`` section builds.
FIX_FIELDS = (("fixes.grad_clip.actor.", "actor_clip"), ("fixes.grad_clip.critic.", "critic_clip"),
              ("fixes.obs_norm.", "obs"), ("fixes.reward.", "reward"), ("fixes.actor_preact_l2", "preact_penalty"))


def _covered(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def blockers(algo_cls: type, keys: list[str]) -> list[str]:
    """The keys among ``keys`` that a running ``algo_cls`` cannot adopt (neither a fix object's nor live)."""
    return [k for k in keys if not k.startswith("fixes.") and not _covered(k, tuple(algo_cls.live_keys))]


def adopt(algo: Any, old: RunConfig, new: RunConfig) -> list[str]:
    """Make the running ``algo`` (and its fix objects) follow ``new``; returns the keys that changed. Raises
    ``ValueError`` naming the keys it cannot change live (nothing is changed then)."""
    changed = config_diff(old, new)
    blocked = blockers(type(algo), changed)
    if blocked:
        raise ValueError(f"{type(algo).__name__} cannot change {', '.join(blocked)} in a running run")
    fixes, layout = algo.fixes, algo.spec
    built = build_fixes(new.fixes, new.env.num_envs, layout.num_agents, layout.max_obs_dim, algo.gamma)
    for section, name in FIX_FIELDS:
        if any(k.startswith(section) for k in changed):
            setattr(fixes, name, switched_on(getattr(built, name), getattr(fixes, name)))
    rest = [k for k in changed if not k.startswith("fixes.")]
    if rest:
        algo.reconfigure(new, rest)
    algo.cfg = new
    return changed


def healed_config(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """``cfg`` with the ``--set`` items that heals applied (a checkpoint's ``healed`` list): the config a healed run
    continues with, and the one its checkpoints' networks and optimizers are built for."""
    if not overrides:
        return cfg
    data = cfg.to_dict()
    for item in overrides:
        apply_override(data, item)
    return build_config(data, "train.heal")


def readopt(algo: Any, base: RunConfig, overrides: list[str]) -> RunConfig:
    """A resumed run's config: ``base`` (as the run started) with the heals a checkpoint recorded, adopted by the
    freshly built ``algo`` before the checkpoint's networks and optimizers are loaded into it."""
    healed = healed_config(base, overrides)
    if overrides:
        adopt(algo, base, healed)
    return healed


# Sections a run started from another run's checkpoint owns (they do not touch the learner).
RUN_LEVEL = ("seed", "train", "detectors", "plasticity", "debug")


def start_from(algo: Any, cfg: RunConfig, state: dict[str, Any], source: Path) -> dict[str, Any]:
    """``train.start_from``: load the checkpoint ``state`` into the freshly built ``algo`` (built for ``cfg``) and
    return the checkpoint's progress. The checkpoint's config (with the heals it recorded) is adopted first, so the
    optimizers and heads are those its state was saved from; then its state is loaded, :meth:`Algorithm.branch`
    takes ``cfg.seed``'s random streams and drops experience tied to the checkpoint's episodes, and ``cfg`` is
    adopted: each key that differs, apart from :data:`RUN_LEVEL`, must be one a running run can change (a fix a
    heal could apply). A one-line ``UserError`` otherwise."""
    saved = healed_config(saved_config(state, source), list(state.get("healed", [])))
    own = cfg.to_dict()
    like = RunConfig.model_validate({**saved.to_dict(), **{k: own[k] for k in RUN_LEVEL}})
    try:
        algo_state = {k: _unshadowed(v) for k, v in state["algo"].items()}
        missing = [k for k in type(algo).resume_only if k not in algo_state]
        if missing:
            raise UserError(f"checkpoint {source} has no {', '.join(missing)} (a finished run's final checkpoint): "
                            "start from a history checkpoint (train.keep_checkpoints) or a resume one")
        progress = dict(state["progress"])
        if cfg.train.steps <= int(progress["env_steps"]):
            raise UserError(f"train.steps {cfg.train.steps} leaves nothing to train after the checkpoint's env step "
                            f"{int(progress['env_steps'])} ({source})")
        adopt(algo, cfg, like)
        algo.load_state_dict(algo_state)
        algo.branch(cfg.seed)
        adopt(algo, like, cfg)
    except ValueError as e:
        raise UserError(f"cannot start from {source}: {e}") from None
    except (KeyError, RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"checkpoint {source} does not match this run: {e.__class__.__name__}: {e}") from None
    return progress


def _unshadowed(value: Any) -> Any:
    """A normalizer's state as a run without heal keeps it: a heal-on run's ``Shadowed`` state ({active, shadow})
    becomes its active part (a run started from it has no heal, so no shadow statistics to keep)."""
    return value["active"] if isinstance(value, dict) and set(value) == {"active", "shadow"} else value
