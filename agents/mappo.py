"""MAPPO and IPPO (Yu et al. 2022, "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games";
de Witt et al. 2020 for IPPO): decentralized PPO actors; they differ only in what the value function sees.

- **MAPPO**: a centralized value on the global state. For every mpe2 task (and the fast port) the env's
  ``state()`` is the concatenation of all agents' observations, which is what the critic gets here
  (``PPO.global_state``); under parameter sharing an agent-id one-hot is appended, so the shared critic
  gives each agent its own value (agents' rewards differ in simple_spread: the collision term is local).
- **IPPO**: each agent's value on its own observation (plus the id one-hot under sharing).

Everything else is ``marl_stability.agents.ppo.PPO``, configured by the ``ppo:`` section (with the shared ``actor``,
``critic``, ``actor_optim``, ``critic_optim`` and ``fixes`` sections).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from marl_stability.agents.ppo import PPO, homogeneous
from marl_stability.envs.vector import AgentLayout

from marl_stability.errors import UserError


def check_ppo_layout(name: str, cfg: Any, layout: AgentLayout) -> None:
    """One-line errors for what PPO cannot do with these agents and this config."""
    hp = cfg.ppo
    if hp.parameter_sharing == "on" and not homogeneous(layout):
        sizes = ", ".join(f"{a}: obs {o}, act {d}{' discrete' if disc else ''}" for a, o, d, disc in
                          zip(layout.agents, layout.obs_dims, layout.act_dims, layout.discrete))
        raise UserError(f"ppo.parameter_sharing=on needs homogeneous agents, but {cfg.env.id}'s differ ({sizes}); "
                        "use ppo.parameter_sharing=off (or auto)")
    continuous = [i for i, d in enumerate(layout.discrete) if not d]
    if hp.distribution != "auto" and not continuous:
        raise UserError(f"ppo.distribution={hp.distribution} is for continuous actions, but {cfg.env.id} has discrete "
                        "actions (categorical); use ppo.distribution=auto")
    low, high = np.asarray(layout.act_low), np.asarray(layout.act_high)
    unbounded = [layout.agents[i] for i in continuous
                 if not np.isfinite(high[i, : layout.act_dims[i]] - low[i, : layout.act_dims[i]]).all()]
    if unbounded and hp.distribution in ("beta", "tanh_gaussian"):
        raise UserError(f"ppo.distribution={hp.distribution} needs finite action bounds, but agents "
                        f"{', '.join(unbounded)} of {cfg.env.id} have unbounded Box actions; use ppo.distribution=gaussian")
    if cfg.actor.output != "auto":
        raise UserError(f"actor.output={cfg.actor.output} is MADDPG's output head; {name} bounds its actions with "
                        "ppo.distribution (gaussian, tanh_gaussian, beta): leave actor.output=auto")
    if cfg.fixes.actor_preact_l2 > 0:
        raise UserError(f"fixes.actor_preact_l2 is MADDPG's actor-loss penalty; {name} does not use it (set it to 0)")


class _LayoutCheckedPPO(PPO):
    """MAPPO and IPPO check their config against the env's agents the same way."""

    @classmethod
    def check_layout(cls, cfg: Any, layout: AgentLayout) -> None:
        check_ppo_layout(cls.name, cfg, layout)


class MAPPO(_LayoutCheckedPPO):
    """PPO with a centralized value function on the global state (the concatenated observations)."""

    name = "mappo"
    centralized = True


class IPPO(_LayoutCheckedPPO):
    """PPO with each agent's value function on its own observation."""

    name = "ippo"
    centralized = False
