"""How a MADDPG-family algorithm acts and updates: one agent at a time, or all agents stacked.

The strategy is chosen once, when the algorithm is built (``maddpg.batched_agents``). Both compute the same
losses; both return the update's statistics as per-agent vectors ``{key: tensor [N]}`` for the one stats
builder (``agents.stats.agent_stats``); the pure maths (joint inputs, TD target) is in ``ddpg_losses``. Both handle G critics per agent (MADDPG G=1; MATD3 G=2: the TD target takes the
minimum over the target critics, the critic loss sums over them, the actor follows the first one).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from marl_stability.agents.ddpg_losses import joint as _joint
from marl_stability.agents.ddpg_losses import reward_stats as _reward_stats
from marl_stability.agents.ddpg_losses import td_target
from marl_stability.agents.networks import (
    feature_probe,
    gumbel_softmax_hard,
    one_hot_argmax,
)

from marl_stability.core.plasticity import FeatureProbe, even_rows


class DDPGLearner(Protocol):
    """What an update strategy reads from its algorithm (MADDPG, MATD3): networks, optimizers, fixes, the
    stepper, and the few rules a subclass may change (target smoothing, the minimum over critics)."""

    spec: Any  # AgentLayout
    hp: Any  # the maddpg config section
    fixes: Any
    stepper: Any  # GradientStepper
    gen: torch.Generator
    low: torch.Tensor
    high: torch.Tensor
    actors: list[Any]
    target_actors: list[Any]
    critics: list[Any]
    critic_units: list[Any]
    critic_groups: list[list[Any]]
    target_critic_groups: list[list[Any]]
    actor_params: list[list[torch.nn.Parameter]]
    critic_params: list[list[torch.nn.Parameter]]
    actor_opts: list[torch.optim.Optimizer]
    critic_opts: list[torch.optim.Optimizer]
    critic_loss_fn: Callable[..., torch.Tensor]

    def set_mode(self, modules: Any, train: bool) -> None: ...
    def agent_obs(self, obs: torch.Tensor, i: int) -> torch.Tensor: ...
    def pad_actions(self, per_agent: list[torch.Tensor]) -> torch.Tensor: ...
    def smooth_target(self, i: int, actions: torch.Tensor) -> torch.Tensor: ...
    def smooth_target_stacked(self, actions: torch.Tensor) -> torch.Tensor: ...
    def min_over_critics(self, qs: list[torch.Tensor]) -> torch.Tensor: ...

# Per-agent statistics of every update, in this order (the critic's Q is the first critic's).
STAT_KEYS = ("loss/critic", "loss/actor", "q/mean", "q/min", "q/max", "q/target_mean", "q/td_error_mean",
             "q/td_error_max", "q/dq_da_norm", "policy/preact_max_abs_batch", "reward/raw_batch_mean",
             "reward/learner_batch_mean", "reward/raw_batch_std", "reward/learner_batch_std")


def ddpg_feature_probes(a: DDPGLearner, b: dict[str, torch.Tensor], obs: torch.Tensor, max_rows: int) -> list[FeatureProbe]:
    """Every actor on its agent's normalized observations and every critic on the joint (normalized observations,
    replayed actions) it regressed on, for the rows of one update's batch (both update strategies train on these
    inputs). MATD3's second twin is ``critic2/<agent>``."""
    sd, rows = a.spec, even_rows(obs.shape[0], max_rows)
    obs, act = obs[rows], b["act"][rows]
    joint = torch.cat([_joint(obs, sd.obs_dims), _joint(act, sd.act_dims)], dim=-1)
    probes = []
    for i, name in enumerate(sd.agents):
        actor = a.actors[i]
        probes.append(feature_probe(f"actor/{name}", actor, actor.mlp, a.agent_obs(obs, i)))
        for g, group in enumerate(a.critic_groups):
            kind = "critic" if g == 0 else f"critic{g + 1}"
            probes.append(feature_probe(f"{kind}/{name}", group[i], group[i].mlp, joint))
    return probes


class PerAgentUpdate:
    """The general strategy: one agent at a time (any obs/action sizes, BatchNorm)."""

    def __init__(self, algo: DDPGLearner) -> None:
        self.a = algo

    # ------------------------------------------------------------------ acting
    def act(self, o: torch.Tensor, explore: bool) -> np.ndarray:
        a, sd, hp = self.a, self.a.spec, self.a.hp
        acts = []
        for i, actor in enumerate(a.actors):
            a.set_mode(actor, False)  # BatchNorm uses running statistics when acting
            action, _ = actor(a.agent_obs(o, i))
            d = sd.act_dims[i]
            if sd.discrete[i]:
                action = gumbel_softmax_hard(action, hp.gumbel_temperature, a.gen) if explore else one_hot_argmax(action)
            elif explore and hp.exploration_std > 0:
                span = a.high[i, :d] - a.low[i, :d]
                action = actor.head.explore(action + torch.randn(action.shape, generator=a.gen) * hp.exploration_std * span)
            acts.append(action)
        return a.pad_actions(acts).numpy()

    def _greedy(self, actors: Sequence[Any], obs: torch.Tensor) -> list[torch.Tensor]:
        a, sd = self.a, self.a.spec
        out = []
        for i, actor in enumerate(actors):
            a.set_mode(actor, False)
            act, _ = actor(a.agent_obs(obs, i))
            out.append(one_hot_argmax(act) if sd.discrete[i] else act)
        return out

    def q_values(self, o: torch.Tensor) -> np.ndarray:
        a, sd = self.a, self.a.spec
        joint_obs, joint_act = _joint(o, sd.obs_dims), torch.cat(self._greedy(a.actors, o), dim=-1)
        qs = []
        for critic in a.critics:
            a.set_mode(critic, False)
            qs.append(critic(joint_obs, joint_act))
        return torch.stack(qs, dim=-1).numpy()

    # ------------------------------------------------------------------ learning
    def update(self, b: dict[str, torch.Tensor], obs: torch.Tensor, next_obs: torch.Tensor, rew: torch.Tensor,
               inject: bool, actor_step: bool) -> dict[str, torch.Tensor]:
        a, sd = self.a, self.a.spec
        joint_obs, joint_next = _joint(obs, sd.obs_dims), _joint(next_obs, sd.obs_dims)
        joint_act = _joint(b["act"], sd.act_dims)
        with torch.no_grad():
            next_acts = [a.smooth_target(i, x) for i, x in enumerate(self._greedy(a.target_actors, next_obs))]
            joint_next_act = torch.cat(next_acts, dim=-1)
        rows: list[dict[str, torch.Tensor]] = []
        for i, name in enumerate(sd.agents):
            with torch.no_grad():
                target_q = a.min_over_critics([g[i](joint_next, joint_next_act) for g in a.target_critic_groups])
                y = td_target(rew[:, i], a.hp.gamma, b["term"][:, i], target_q)
            row = self._critic_step(i, name, joint_obs, joint_act, y, inject)
            if actor_step:
                row.update(self._actor_step(i, name, b, obs, joint_obs))
            rows.append(row)
        keys = list(rows[0])
        table = torch.stack([torch.stack([r[k] for k in keys]) for r in rows])  # [N, K]: few small kernels
        stats = {k: table[:, j] for j, k in enumerate(keys)}
        stats.update(_reward_stats(b["rew"], rew))
        return stats

    def _critic_step(self, i: int, name: str, joint_obs: torch.Tensor, joint_act: torch.Tensor, y: torch.Tensor,
                     inject: bool) -> dict[str, torch.Tensor]:
        """y = r + gamma * (1 - terminated) * min_g Q'_g,i(o', mu'(o')); loss summed over agent i's critics."""
        a = self.a
        a.set_mode(a.critic_units[i], True)
        qs = [g[i](joint_obs, joint_act) for g in a.critic_groups]
        loss = a.critic_loss_fn(qs[0], y)
        for q in qs[1:]:
            loss = loss + a.critic_loss_fn(q, y)
        if inject:
            loss = loss * float("nan")
        a.stepper.step(loss, a.critic_opts[i], a.critic_params[i], a.fixes.critic_clip, f"critic/{name}")
        q_d = qs[0].detach()
        td = (q_d - y).abs()
        out = {"loss/critic": loss.detach(), "q/mean": q_d.mean(), "q/min": q_d.min(), "q/max": q_d.max(),
               "q/target_mean": y.mean(), "q/td_error_mean": td.mean(), "q/td_error_max": td.max()}
        if len(qs) > 1:
            out["q/twin_gap"] = (qs[0].detach() - qs[1].detach()).abs().mean()
        return out

    def _actor_step(self, i: int, name: str, b: dict[str, torch.Tensor], obs: torch.Tensor,
                    joint_obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Maximize Q_i(o, a_1..mu_i(o_i)..a_N) (first critic), the others' actions from the buffer."""
        a, sd = self.a, self.a.spec
        actor, critic = a.actors[i], a.critics[i]
        a.set_mode(actor, True)
        out, pre = actor(a.agent_obs(obs, i))
        if sd.discrete[i]:
            out = gumbel_softmax_hard(out, a.hp.gumbel_temperature, a.gen)
        out.retain_grad()  # d(actor loss)/d(action) = -dQ/da / batch: the critic's pull on the actor
        acts = [b["act"][:, j, : sd.act_dims[j]] for j in range(sd.num_agents)]
        acts[i] = out
        a.set_mode(critic, False)
        loss = -critic(joint_obs, torch.cat(acts, dim=-1)).mean() + a.fixes.preact_penalty(pre)
        a.stepper.step(loss, a.actor_opts[i], a.actor_params[i], a.fixes.actor_clip, f"actor/{name}")
        a.critic_units[i].zero_grad(set_to_none=True)  # the actor loss also reached the critic's parameters
        dq_da = out.grad.norm(dim=-1).mean() * out.shape[0] if out.grad is not None else torch.tensor(float("nan"))
        return {"loss/actor": loss.detach(), "q/dq_da_norm": dq_da, "policy/preact_max_abs_batch": pre.detach().abs().max()}


class StackedUpdate:
    """The same maths for identical agents: every network evaluated for all agents in one stacked call.

    Agent i's critic loss reaches only agent i's critics and its actor loss only actor i; the actor loss goes
    through critic i's weights detached (the per-agent loop computes and then discards those gradients). All
    critics step before the actors' forward, as in the loop, where critic i steps before actor i uses it.
    The same random draws, in the same order, as the per-agent loop.
    """

    def __init__(self, algo: DDPGLearner) -> None:
        from marl_stability.agents.networks import ActorStack, CriticStack

        a = self.a = algo
        sd = a.spec
        n, d = sd.num_agents, sd.act_dims[0]
        self.actor_stack = ActorStack(a.actors)
        self.target_actor_stack = ActorStack(a.target_actors)
        self.first_critic_stack = CriticStack(a.critics)  # what the actors follow
        # Every critic of every agent, group-major ([G * N, B] outputs): G = 1 is the first stack itself.
        self.critic_stack = self.first_critic_stack if len(a.critic_groups) == 1 else CriticStack(
            [c for g in a.critic_groups for c in g])
        self.target_critic_stack = CriticStack([c for g in a.target_critic_groups for c in g])
        self.own_slot = torch.eye(n, dtype=torch.bool).view(n, 1, n, 1)  # critic i sees actor i's action
        self.rows = torch.arange(n).unsqueeze(1)  # [N, 1]
        # Critic input columns of agent i's own action: after all observations, slot i of the joint action.
        self.own_cols = sum(sd.obs_dims) + self.rows * d + torch.arange(d)  # [N, d]

    # ------------------------------------------------------------------ acting
    def act(self, o: torch.Tensor, explore: bool) -> np.ndarray:
        a, hp = self.a, self.a.hp
        action, _ = self.actor_stack(o.transpose(0, 1))  # [N, E, d]
        if self.actor_stack.discrete:
            action = gumbel_softmax_hard(action, hp.gumbel_temperature, a.gen) if explore else one_hot_argmax(action)
        elif explore and hp.exploration_std > 0:
            n, e, d = action.shape
            # Normal draws are generated in blocks, so one [N, E, d] draw differs from N draws of [E, d]: keep N.
            noise = torch.stack([torch.randn((e, d), generator=a.gen) for _ in range(n)])
            span = (a.high - a.low).unsqueeze(1)
            action = self.actor_stack.explore(action + noise * hp.exploration_std * span)
        return action.transpose(0, 1).contiguous().numpy()

    @staticmethod
    def greedy(stack: Any, obs: torch.Tensor) -> torch.Tensor:
        """Every agent's noise-free action at joint observations [B, N, D] -> [N, B, d] (discrete: one-hot)."""
        action, _ = stack(obs.transpose(0, 1))
        return one_hot_argmax(action) if stack.discrete else action

    @staticmethod
    def joint_q(stack: Any, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Every stacked critic's Q at joint observations [B, N, D] and stacked actions [N, B, d] -> [K, B]."""
        batch = obs.shape[0]
        return stack(torch.cat([obs.reshape(batch, -1), actions.transpose(0, 1).reshape(batch, -1)], dim=-1))

    def q_values(self, o: torch.Tensor) -> np.ndarray:
        return self.joint_q(self.first_critic_stack, o, self.greedy(self.actor_stack, o)).T.numpy()

    # ------------------------------------------------------------------ learning
    def update(self, b: dict[str, torch.Tensor], obs: torch.Tensor, next_obs: torch.Tensor, rew: torch.Tensor,
               inject: bool, actor_step: bool) -> dict[str, torch.Tensor]:
        a = self.a
        n, batch, groups = a.spec.num_agents, obs.shape[0], len(a.critic_groups)
        joint_obs = obs.reshape(batch, -1)
        with torch.no_grad():
            next_act = a.smooth_target_stacked(self.greedy(self.target_actor_stack, next_obs))
            target_q = self.joint_q(self.target_critic_stack, next_obs, next_act)  # [G * N, B]
            if groups > 1:
                target_q = target_q.view(groups, n, batch).amin(0)
            y = td_target(rew.T, a.hp.gamma, b["term"].T, target_q)  # [N, B]
        stats = self._critic_steps(b, joint_obs, y, inject)
        if actor_step:
            stats.update(self._actor_steps(b, obs, joint_obs))
        stats.update(_reward_stats(b["rew"], rew))
        return stats

    def _critic_steps(self, b: dict[str, torch.Tensor], joint_obs: torch.Tensor, y: torch.Tensor,
                      inject: bool) -> dict[str, torch.Tensor]:
        a = self.a
        n, batch, groups = a.spec.num_agents, joint_obs.shape[0], len(a.critic_groups)
        q = self.critic_stack(torch.cat([joint_obs, b["act"].reshape(batch, -1)], dim=-1))  # [G * N, B]
        if groups == 1:
            losses = a.critic_loss_fn(q, y, reduction="none").mean(dim=1)
        else:
            q = q.view(groups, n, batch)
            losses = a.critic_loss_fn(q, y.expand(groups, n, batch), reduction="none").mean(dim=2).sum(dim=0)
        if inject:
            losses = losses * float("nan")
        self._step_all(losses, a.critic_opts, a.critic_params, a.fixes.critic_clip, "critic")
        q_d = q.detach()
        first = q_d if groups == 1 else q_d[0]
        td = (first - y).abs()
        out = {"loss/critic": losses.detach(), "q/mean": first.mean(1), "q/min": first.amin(1), "q/max": first.amax(1),
               "q/target_mean": y.mean(1), "q/td_error_mean": td.mean(1), "q/td_error_max": td.amax(1)}
        if groups > 1:
            out["q/twin_gap"] = (q_d[0] - q_d[1]).abs().mean(1)
        return out

    def _actor_steps(self, b: dict[str, torch.Tensor], obs: torch.Tensor, joint_obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Agent i maximizes Q_i(o, a_1..mu_i(o_i)..a_N) (first critic), the others' actions from the buffer."""
        a = self.a
        n, batch, act = a.spec.num_agents, obs.shape[0], b["act"]
        out, pre = self.actor_stack(obs.transpose(0, 1))  # [N, B, d]
        if self.actor_stack.discrete:
            out = gumbel_softmax_hard(out, a.hp.gumbel_temperature, a.gen)
        out.retain_grad()  # d(actor loss)/d(action) = -dQ/da / batch: the critic's pull on the actor
        stack = self.first_critic_stack
        # Critic i's joint action: the buffer's, with agent i's slot taken by actor i's output.
        with torch.no_grad():
            critic_params = stack.mlp.stacked()
            others = torch.where(self.own_slot, 0.0, act.unsqueeze(0)).reshape(n, batch, -1)  # own slot zeroed
            x_others = torch.cat([joint_obs.expand(n, -1, -1), others], dim=-1)
        if stack.mlp.first_is_residual:
            own = torch.zeros_like(x_others)
            own[self.rows, :, self.own_cols] = out.transpose(1, 2)  # [N, d, B] into each own slot
            actor_q = stack(x_others + own, critic_params)
        else:
            # First layer = (everything but agent i's action) W_i + a_i W_i[own columns]: only the small second
            # product is differentiated.
            w0, b0 = critic_params[0][0], critic_params[0][1]
            h0 = torch.baddbmm(b0, x_others, w0)
            h0 = torch.baddbmm(h0, out, w0[self.rows, self.own_cols])  # [N, B, d] @ [N, d, hidden]
            actor_q = stack(None, critic_params, first_linear=h0)
        losses = -actor_q.mean(dim=1) + a.fixes.preact_penalty.per_agent(pre)
        finite = self._step_all(losses, a.actor_opts, a.actor_params, a.fixes.actor_clip, "actor")
        for ps in a.critic_params:  # as in the loop, no critic gradient outlives the update
            for p in ps:
                p.grad = None
        nan = torch.full((n,), float("nan"))
        dq_da = out.grad.norm(dim=-1).mean(dim=1) * batch if out.grad is not None else nan
        dq_da = torch.where(torch.tensor(finite), dq_da, nan)  # no backward for that agent: as in the loop
        return {"loss/actor": losses.detach(), "q/dq_da_norm": dq_da,
                "policy/preact_max_abs_batch": pre.detach().abs().flatten(1).amax(1)}

    def _step_all(self, losses: torch.Tensor, opts: list[torch.optim.Optimizer], params: list[list[torch.nn.Parameter]],
                  clipper: Any, kind: str) -> list[bool]:
        """One backward of the sum of the agents' finite losses (agent i's loss reaches only agent i's
        parameters, so each gradient is the one its own loss gives), then each agent's own clip and step.
        Returns which losses were finite."""
        for ps in params:
            for p in ps:
                p.grad = None
        finite = torch.isfinite(losses).tolist()
        if all(finite):
            losses.sum().backward()
        elif any(finite):
            losses[torch.tensor(finite)].sum().backward()
        stepper = self.a.stepper
        for i, name in enumerate(self.a.spec.agents):
            model = f"{kind}/{name}"
            if not finite[i]:
                stepper.skip(model, losses[i], params[i])
            else:
                stepper.clip_and_step(losses[i], opts[i], params[i], clipper, model)
        return finite
