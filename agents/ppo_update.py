"""One PPO update of MAPPO/IPPO, split from the algorithm class: the rollout turned into a training batch
(GAE, value-normalizer update, advantage normalization), one minibatch step per policy group, and the
per-agent statistics measured after the epochs."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from marl_stability.agents.ppo_losses import (
    UpdateAccumulator,
    explained_variance,
    policy_loss,
    value_loss,
)
from marl_stability.agents.ppo_networks import PolicyGroup
from marl_stability.agents.ppo_rollout import gae


class PPOLearner(Protocol):
    """What the PPO update reads from its algorithm (MAPPO, IPPO): the rollout, the policy groups, fixes, the
    stepper, and how each group's actor and critic see the observations."""

    spec: Any  # AgentLayout
    hp: Any  # the ppo config section
    fixes: Any
    stepper: Any  # GradientStepper
    gen: torch.Generator
    rollout: Any  # Rollout
    groups: list[PolicyGroup]

    def actor_input(self, g: PolicyGroup, obs: torch.Tensor) -> torch.Tensor: ...
    def critic_input(self, g: PolicyGroup, obs: torch.Tensor) -> torch.Tensor: ...


class PPOUpdate:
    """The update maths of a ``PPO`` algorithm (``a``): it reads the algorithm's rollout, networks and fixes."""

    def __init__(self, algo: PPOLearner) -> None:
        self.a = algo

    def prepare(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The rollout as one flat batch [T * E, N, ...] with advantages and returns, and the per-agent
        statistics known before the epochs (advantage mean/std before normalization, explained variance,
        rewards)."""
        a = self.a
        d = a.rollout.tensors()
        learner_reward = a.fixes.reward(d["reward"])
        adv, ret = gae(learner_reward, d["values"], d["next_values"], d["terminated"], d["done"].unsqueeze(-1),
                       a.hp.gamma, a.hp.gae_lambda)
        n = a.spec.num_agents
        stats = {"value/advantage_mean": adv.reshape(-1, n).mean(0), "value/advantage_std": adv.reshape(-1, n).std(0),
                 "value/explained_variance": explained_variance(d["values"], ret),
                 "reward/raw_batch_mean": d["reward"].reshape(-1, n).mean(0),
                 "reward/learner_batch_mean": learner_reward.reshape(-1, n).mean(0),
                 "reward/raw_batch_std": d["reward"].reshape(-1, n).std(0),
                 "reward/learner_batch_std": learner_reward.reshape(-1, n).std(0)}
        for g in a.groups:
            if g.value_norm is not None:
                g.value_norm.update(ret[..., g.index])
        if a.hp.advantage_norm:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731 -- [T, E, ...] -> [T * E, ...]
        batch = {"obs": flat(d["obs"]), "actions": flat(d["actions"]), "log_prob": flat(d["log_prob"]),
                 "values_norm": flat(d["values_norm"]), "returns": flat(ret), "advantages": flat(adv)}
        return batch, stats

    def group_step(self, g: PolicyGroup, b: dict[str, torch.Tensor], acc: UpdateAccumulator, inject: bool) -> None:
        """One clipped-surrogate step of the group's actor and one value step of its critic on a minibatch."""
        a = self.a
        hp, idx = a.hp, g.index
        dist, _ = g.actor.dist(a.actor_input(g, b["obs"]))
        stored = b["actions"][:, idx, : g.stored_dim].reshape(-1, g.stored_dim)
        surrogate, diag = policy_loss(dist.log_prob(stored), b["log_prob"][:, idx].reshape(-1),
                                      b["advantages"][:, idx].reshape(-1), hp.clip)
        entropy = dist.entropy(a.gen)
        loss = surrogate.mean() - hp.entropy_coef * entropy.mean()
        a.stepper.step(loss, g.actor_opt, g.actor_params, a.fixes.actor_clip, f"actor/{g.name}")
        pred = g.critic(a.critic_input(g, b["obs"]))
        target = b["returns"][:, idx].reshape(-1)
        if g.value_norm is not None:
            target = g.value_norm.normalize(target)
        v_loss = value_loss(pred, target, b["values_norm"][:, idx].reshape(-1), hp.value_loss, hp.huber_delta,
                            hp.value_clip)
        critic_loss = hp.value_loss_coef * v_loss.mean() * (float("nan") if inject else 1.0)
        a.stepper.step(critic_loss, g.critic_opt, g.critic_params, a.fixes.critic_clip, f"critic/{g.name}")
        acc.add(idx, {"loss/policy": surrogate, "loss/value": v_loss, "policy/entropy": g.actor.head.entropy_per_dim(entropy),
                      "policy/approx_kl": diag["approx_kl"], "policy/clip_fraction": diag["clipped"]}, diag["ratio"])

    @torch.no_grad()
    def policy_stats(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """After the epochs, on the rollout's observations: the actors' max |pre-activation| and log-std
        mean/min/max (in units of half the action range; Gaussian heads only) per agent."""
        a = self.a
        n, m = a.spec.num_agents, obs.shape[0]
        nan = torch.full((n,), float("nan"))
        out = {"policy/preact_max_abs_batch": nan.clone()}
        with_std = any(g.actor.head.uses_log_std for g in a.groups)
        if with_std:
            out.update({k: nan.clone() for k in ("policy/log_std_mean", "policy/log_std_min", "policy/log_std_max")})
        for g in a.groups:
            raw = g.actor(a.actor_input(g, obs)).reshape(m, len(g.agents), -1)
            out["policy/preact_max_abs_batch"][g.index] = raw.abs().flatten(2).amax(dim=(0, 2))
            log_std = g.actor.head.log_std(raw)
            if log_std is not None:
                ls = log_std.expand(m, len(g.agents), g.act_dim)
                out["policy/log_std_mean"][g.index] = ls.mean(dim=(0, 2))
                out["policy/log_std_min"][g.index] = ls.amin(dim=(0, 2))
                out["policy/log_std_max"][g.index] = ls.amax(dim=(0, 2))
        return out

    def group_scalars(self) -> dict[str, float]:
        a = self.a
        out = {}
        for g in a.groups:
            if g.value_norm is not None:
                out[f"value/norm_mean/{g.name}"], out[f"value/norm_std/{g.name}"] = g.value_norm.mean, g.value_norm.std
        return out

