"""MADDPG (Lowe et al. 2017): decentralized deterministic actors, one centralized critic per agent.

Data in and out is batched: observations ``[num_envs, num_agents, max_obs_dim]``, actions
``[num_envs, num_agents, max_act_dim]`` (continuous: the Box action; discrete: a one-hot vector).
An algorithm exposes ``act``, ``observe``, ``pending_updates``, ``update`` and ``state_dict`` — the
trainer calls nothing else, so an on-policy algorithm (rollout buffer, ``pending_updates`` = 1 when the
rollout is full) fits the same loop.

Defaults follow openai/maddpg (Adam 1e-2, gamma 0.95, tau 0.01, batch 1024, two 64-unit ReLU layers, one
update every 100 env steps after 1024*25 warm-up steps); its per-tensor clip 0.5 and pre-activation
penalty 1e-3 are available as fixes but off by default, so the failure can be studied.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from agents.buffer import ReplayBuffer
from envs.vector import AgentLayout
from agents.networks import (Actor, ActorStack, Critic, CriticStack, gumbel_softmax_hard, one_hot_argmax,
                             stack_incompatibility)
from marl_stability.config import OptimConfig, RunConfig
from marl_stability.errors import UserError
from marl_stability.fixes import ClipStats, Fixes


class NonFiniteParameters(RuntimeError):
    """A parameter became NaN/Inf after an optimizer step: the run cannot continue."""


# The algorithm sees the agents exactly as the environment describes them: names, true obs/action sizes,
# discrete flags and bounds (padded to the batched layout).
AgentSpec = AgentLayout


def make_optimizer(params: Any, cfg: OptimConfig, fast: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer. ``fast``: one kernel for all parameters instead of a Python loop over them,
    fused where torch has it on CPU (Adam ~3x and SGD ~2x faster per step than the default for these small
    networks), else foreach (RMSprop). Fused kernels round differently (~1e-7 per step), so the fast path
    goes with maddpg.batched_agents and the per-agent path stays bit-identical to earlier releases."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps, **({"fused": True} if fast else {}))
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, eps=cfg.eps, momentum=cfg.momentum,
                                   **({"foreach": True} if fast else {}))
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, **({"fused": True} if fast else {}))


def set_training(module: torch.nn.Module, training: bool) -> None:
    """module.train(training), skipped when already in that mode (the recursive call is costly per step)."""
    if module.training != training:
        module.train(training)


def _no_mode_switch(module: torch.nn.Module, training: bool) -> None:
    """Networks without BatchNorm/Dropout compute the same in train and eval mode: nothing to switch."""


def has_mode_dependent_layers(modules: Sequence[torch.nn.Module]) -> bool:
    kinds = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)
    return any(isinstance(sub, kinds) for m in modules for sub in m.modules())


def all_finite(params: Sequence[torch.Tensor]) -> bool:
    # A NaN/Inf anywhere makes the sum of sums non-finite; one reduction instead of one per tensor.
    return bool(torch.isfinite(torch.stack([p.sum() for p in params]).sum()))


class MADDPG:
    def __init__(self, cfg: RunConfig, spec: AgentSpec, fixes: Fixes) -> None:
        self.cfg, self.spec, self.fixes = cfg, spec, fixes
        self.hp = cfg.maddpg
        torch.manual_seed(cfg.seed)  # network init
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)  # exploration, Gumbel, warm-up actions
        self.rng = np.random.default_rng(cfg.seed + 2)  # replay sampling
        n = spec.num_agents
        low = torch.tensor(np.array(spec.act_low), dtype=torch.float32)
        high = torch.tensor(np.array(spec.act_high), dtype=torch.float32)
        self.low, self.high = low, high
        a = cfg.actor
        self.actors = [
            Actor(spec.obs_dims[i], spec.act_dims[i], spec.discrete[i], a.hidden_sizes, a.activation, a.norm,
                  a.residual, a.init, a.last_layer_init, a.output, low[i, : spec.act_dims[i]], high[i, : spec.act_dims[i]])
            for i in range(n)
        ]
        c = cfg.critic
        critic_in = sum(spec.obs_dims) + sum(spec.act_dims)
        self.critics = [
            Critic(critic_in, c.hidden_sizes, c.activation, c.norm, c.residual, c.init, c.last_layer_init) for _ in range(n)
        ]
        self.target_actors = [copy.deepcopy(m).eval() for m in self.actors]
        self.target_critics = [copy.deepcopy(m).eval() for m in self.critics]
        for m in self.target_actors + self.target_critics:
            m.requires_grad_(False)
        # Parameter objects never change (load_state_dict copies in place): collect them once.
        self._actor_params = [list(m.parameters()) for m in self.actors]
        self._critic_params = [list(m.parameters()) for m in self.critics]
        self._all_params = [p for ps in self._actor_params + self._critic_params for p in ps]
        online, targets = self.actors + self.critics, self.target_actors + self.target_critics
        self._soft_pairs = ([p for m in targets for p in m.parameters()], [p for m in online for p in m.parameters()])
        self._buffer_pairs = ([b for m in targets for b in m.buffers()], [b for m in online for b in m.buffers()])
        self._set_mode = set_training if has_mode_dependent_layers(online) else _no_mode_switch
        self.batched = self._resolve_batched(self.hp.batched_agents)
        self.actor_opts = [make_optimizer(m.parameters(), cfg.actor_optim, self.batched) for m in self.actors]
        self.critic_opts = [make_optimizer(m.parameters(), cfg.critic_optim, self.batched) for m in self.critics]
        if self.batched:
            self._actor_stack = ActorStack(self.actors)
            self._critic_stack = CriticStack(self.critics)
            self._target_actor_stack = ActorStack(self.target_actors)
            self._target_critic_stack = CriticStack(self.target_critics)
            self._own_slot = torch.eye(n, dtype=torch.bool).view(n, 1, n, 1)  # critic i sees actor i's action
            d = spec.act_dims[0]
            self._rows = torch.arange(n).unsqueeze(1)  # [N, 1]
            # Critic input columns of agent i's own action: after all observations, slot i of the joint action.
            self._own_cols = sum(spec.obs_dims) + self._rows * d + torch.arange(d)  # [N, d]
        self.buffer = ReplayBuffer(self.hp.buffer_size, n, spec.max_obs_dim, spec.max_act_dim)
        self.env_steps = 0
        self.updates = 0
        self._updates_owed = 0.0
        self.first_nonfinite: dict[str, Any] | None = None  # evidence of the first non-finite update
        # Optional instrumentation, one monitor per network name ("critic/agent_0"): see marl_stability.monitor.
        self.monitors: dict[str, Any] = {}
        self.monitor_every = 1
        # Mean over the batch by default; the batched update asks for reduction="none" and averages per agent.
        self._critic_loss_fn = (
            F.mse_loss if self.hp.critic_loss == "mse" else functools.partial(F.huber_loss, delta=self.hp.huber_delta)
        )

    def batching_obstacle(self) -> str | None:
        """Why the agents' networks cannot be evaluated as one stack (None when they can)."""
        sd = self.spec
        if len(set(sd.obs_dims)) > 1:
            return f"the agents' observation sizes differ ({dict(zip(sd.agents, sd.obs_dims))})"
        if len(set(sd.act_dims)) > 1:
            return f"the agents' action sizes differ ({dict(zip(sd.agents, sd.act_dims))})"
        if len(set(sd.discrete)) > 1:
            return "some agents have discrete and some continuous actions"
        for what, nets in (("actor", self.actors), ("critic", self.critics)):
            reason = stack_incompatibility([m.mlp for m in nets])
            if reason is not None:
                return f"the {what}s have {reason}" + (f" ({what}.norm=batchnorm)" if "BatchNorm" in reason else "")
        return None

    def _resolve_batched(self, mode: str) -> bool:
        if mode == "off":
            return False
        reason = self.batching_obstacle()
        if reason is not None and mode == "on":
            raise UserError(f"maddpg.batched_agents=on is impossible here: {reason}; use auto (batched when possible) or off")
        return reason is None

    # ------------------------------------------------------------------ acting
    def _agent_obs(self, obs: torch.Tensor, i: int) -> torch.Tensor:
        return obs[..., i, : self.spec.obs_dims[i]]

    def _pad_actions(self, per_agent: list[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(per_agent[0].shape[0], self.spec.num_agents, self.spec.max_act_dim)
        for i, a in enumerate(per_agent):
            out[:, i, : a.shape[-1]] = a
        return out

    def random_actions(self, num_envs: int) -> torch.Tensor:
        acts = []
        for i in range(self.spec.num_agents):
            d = self.spec.act_dims[i]
            if self.spec.discrete[i]:
                idx = torch.randint(0, d, (num_envs,), generator=self.gen)
                acts.append(F.one_hot(idx, d).float())
            else:
                u = torch.rand(num_envs, d, generator=self.gen)
                acts.append(self.low[i, :d] + u * (self.high[i, :d] - self.low[i, :d]))
        return self._pad_actions(acts)

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Actions for a batch of env copies; uniform random during warm-up when exploring."""
        if explore and self.env_steps < self.hp.warmup_steps:
            return self.random_actions(obs.shape[0]).numpy()
        o = self.fixes.obs(torch.as_tensor(obs, dtype=torch.float32))
        if self.batched:
            return self._act_batched(o, explore)
        acts = []
        for i, actor in enumerate(self.actors):
            self._set_mode(actor, False)  # BatchNorm uses running statistics when acting
            action, _ = actor(self._agent_obs(o, i))
            d = self.spec.act_dims[i]
            if self.spec.discrete[i]:
                action = gumbel_softmax_hard(action, self.hp.gumbel_temperature, self.gen) if explore else one_hot_argmax(action)
            elif explore and self.hp.exploration_std > 0:
                span = self.high[i, :d] - self.low[i, :d]
                action = actor.head.explore(action + torch.randn(action.shape, generator=self.gen)
                                            * self.hp.exploration_std * span)
            acts.append(action)
        return self._pad_actions(acts).numpy()

    def _act_batched(self, o: torch.Tensor, explore: bool) -> np.ndarray:
        """``act`` for identical agents: one stacked forward; the same random draws, in the same order, as the
        per-agent loop (a uniform draw of [N, E, d] is the N per-agent draws of [E, d] back to back)."""
        action, _ = self._actor_stack(o.transpose(0, 1))  # [N, E, d]
        if self._actor_stack.discrete:
            action = gumbel_softmax_hard(action, self.hp.gumbel_temperature, self.gen) if explore else one_hot_argmax(action)
        elif explore and self.hp.exploration_std > 0:
            n, e, d = action.shape
            # Normal draws are generated in blocks, so one [N, E, d] draw differs from N draws of [E, d]: keep N.
            noise = torch.stack([torch.randn((e, d), generator=self.gen) for _ in range(n)])
            span = (self.high - self.low).unsqueeze(1)
            action = self._actor_stack.explore(action + noise * self.hp.exploration_std * span)
        return action.transpose(0, 1).contiguous().numpy()

    @staticmethod
    def _stacked_greedy(stack: ActorStack, obs: torch.Tensor) -> torch.Tensor:
        """Every agent's noise-free action at joint observations [B, N, D] -> [N, B, d] (discrete: one-hot)."""
        action, _ = stack(obs.transpose(0, 1))
        return one_hot_argmax(action) if stack.discrete else action

    @staticmethod
    def _stacked_q(stack: CriticStack, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Every agent's Q at joint observations [B, N, D] and stacked actions [N, B, d] -> [N, B]."""
        batch = obs.shape[0]
        return stack(torch.cat([obs.reshape(batch, -1), actions.transpose(0, 1).reshape(batch, -1)], dim=-1))

    def policy_fn(self, i: int) -> Any:
        """Agent i's effective deterministic policy: raw observation [B, obs_dim_i] -> the action the env
        applies (continuous: clipped to the bounds; discrete: softmax probabilities). Differentiable, so
        instrumentation can measure how much the action depends on the observation."""
        sd, actor = self.spec, self.actors[i]
        d = sd.act_dims[i]

        def policy(o: torch.Tensor) -> torch.Tensor:
            out, _ = actor(self._normalize_agent_obs(i, o))
            if sd.discrete[i]:
                return torch.softmax(out, dim=-1)
            return torch.maximum(torch.minimum(out, self.high[i, :d]), self.low[i, :d])

        return policy

    @torch.no_grad()
    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q_i(o, mu(o)) for every agent at a batch of joint observations [B, N, D] -> [B, N]."""
        sd = self.spec
        o = self.fixes.obs(torch.as_tensor(obs, dtype=torch.float32))
        if self.batched:
            return self._stacked_q(self._critic_stack, o, self._stacked_greedy(self._actor_stack, o)).T.numpy()
        acts = []
        for i, actor in enumerate(self.actors):
            self._set_mode(actor, False)
            a, _ = actor(self._agent_obs(o, i))
            acts.append(one_hot_argmax(a) if sd.discrete[i] else a)
        joint_obs, joint_act = self._joint(o, sd.obs_dims), torch.cat(acts, dim=-1)
        qs = []
        for critic in self.critics:
            self._set_mode(critic, False)
            qs.append(critic(joint_obs, joint_act))
        return torch.stack(qs, dim=-1).numpy()

    def preactivations(self, i: int, obs_i: torch.Tensor) -> torch.Tensor:
        """Agent i's output-layer pre-activations at raw observations [B, obs_dim_i]."""
        self._set_mode(self.actors[i], False)
        return self.actors[i](self._normalize_agent_obs(i, obs_i))[1]

    def _normalize_agent_obs(self, i: int, obs_i: torch.Tensor) -> torch.Tensor:
        """Apply the (per-agent) observation transform to agent i's raw observations [B, obs_dim_i]."""
        sd = self.spec
        padded = torch.zeros(obs_i.shape[0], sd.num_agents, sd.max_obs_dim, dtype=obs_i.dtype)
        padded[:, i, : sd.obs_dims[i]] = obs_i  # in-place copy into a fresh tensor keeps the graph to obs_i
        return self.fixes.obs(padded)[:, i, : sd.obs_dims[i]]

    # ------------------------------------------------------------------ storing
    def observe(self, obs: np.ndarray, actions: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
                terminated: np.ndarray, done: np.ndarray) -> None:
        """Store a batch of transitions and update the running statistics of the fixes."""
        self.buffer.add(obs, actions, reward, next_obs, terminated.astype(np.float32))
        self.fixes.obs.update(obs)
        self.fixes.reward.update(reward, done)
        self.env_steps += obs.shape[0]
        if self.env_steps >= self.hp.warmup_steps and len(self.buffer) >= self.hp.batch_size:
            self._updates_owed += obs.shape[0] / self.hp.update_every

    def pending_updates(self) -> int:
        """Update rounds owed now (the update-to-data ratio is updates_per_round / update_every)."""
        rounds = int(self._updates_owed)
        self._updates_owed -= rounds
        return rounds * self.hp.updates_per_round

    # ------------------------------------------------------------------ learning
    def _joint(self, x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
        return torch.cat([x[:, i, :d] for i, d in enumerate(dims)], dim=-1)

    def _step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
              clipper: Any, model: str, batch: dict[str, torch.Tensor]) -> tuple[ClipStats, bool]:
        """backward -> clip -> step, skipping the step when the loss or gradient is non-finite."""
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self._record_nonfinite(model, "loss", loss, batch)
            return ClipStats(float("nan"), float("nan"), False), False
        loss.backward()
        return self._clip_and_step(loss, opt, params, clipper, model, batch)

    def _clip_and_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                       clipper: Any, model: str, batch: dict[str, torch.Tensor]) -> tuple[ClipStats, bool]:
        """After this network's backward: monitor -> clip -> step, skipping the step on a non-finite gradient."""
        # Instrumentation is sampled: every monitor_every-th update (its hooks cost ~10% of an update).
        monitor = self.monitors.get(model) if self.updates % self.monitor_every == 0 else None
        if monitor is not None:
            monitor.after_backward(self.env_steps)
        clip = clipper(params)
        if not np.isfinite(clip.pre_norm):
            self._record_nonfinite(model, "gradient", loss, batch)
            opt.zero_grad(set_to_none=True)
            return clip, False
        if monitor is not None:
            monitor.after_clip(self.env_steps)
        opt.step()
        if monitor is not None:
            monitor.after_step(self.env_steps)
        return clip, True

    def _step_all(self, losses: torch.Tensor, opts: list[torch.optim.Optimizer], params: list[list[torch.nn.Parameter]],
                  clipper: Any, kind: str, batch: dict[str, torch.Tensor]) -> tuple[list[ClipStats], list[bool], list[bool]]:
        """``_step`` for all agents at once: one backward of the sum of the agents' finite losses (agent i's loss
        reaches only agent i's parameters, so each gradient is the one its own loss gives), then each agent's
        own clip and optimizer step. Returns (clip stats, stepped, loss finite) per agent."""
        for ps in params:
            for p in ps:
                p.grad = None
        finite = torch.isfinite(losses).tolist()
        if all(finite):
            losses.sum().backward()
        elif any(finite):
            losses[torch.tensor(finite)].sum().backward()
        clips, oks = [], []
        for i, name in enumerate(self.spec.agents):
            model = f"{kind}/{name}"
            if not finite[i]:
                for p in params[i]:
                    p.grad = None
                self._record_nonfinite(model, "loss", losses[i], batch)
                clips.append(ClipStats(float("nan"), float("nan"), False))
                oks.append(False)
                continue
            clip, ok = self._clip_and_step(losses[i], opts[i], params[i], clipper, model, batch)
            clips.append(clip)
            oks.append(ok)
        return clips, oks, finite

    def _record_nonfinite(self, model: str, what: str, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Keep the evidence of the first non-finite update (batch, parameters, gradients) for forensics."""
        if self.first_nonfinite is not None:
            return
        nets = self.modules()
        self.first_nonfinite = {
            "update": self.updates,
            "model": model,
            "what": what,
            "loss": float(loss.detach()),
            "batch": {k: v.clone() for k, v in batch.items()},
            "parameters": {f"{n}/{pn}": p.detach().clone() for n, m in nets.items() for pn, p in m.named_parameters()},
            "gradients": {f"{n}/{pn}": p.grad.detach().clone() for n, m in nets.items()
                          for pn, p in m.named_parameters() if p.grad is not None},
        }

    _STAT_KEYS = ("q/mean", "q/min", "q/max", "q/target_mean", "critic/td_error_mean", "critic/td_error_max",
                  "critic/dq_da_norm", "actor/preact_max_abs_batch", "reward/raw_batch_mean",
                  "reward/learner_batch_mean", "reward/raw_batch_std", "reward/learner_batch_std")

    def _inject_nonfinite(self) -> bool:
        dbg = self.cfg.debug
        return dbg.inject_nonfinite_at_update is not None and self.updates >= dbg.inject_nonfinite_at_update and (
            dbg.inject_nonfinite_count is None or self.updates < dbg.inject_nonfinite_at_update + dbg.inject_nonfinite_count)

    def update(self) -> dict[str, float]:
        """One gradient update of every critic and actor, then soft target updates. Returns scalar stats."""
        self.updates += 1
        b = self.buffer.sample(self.hp.batch_size, self.rng)
        obs, next_obs = self.fixes.obs(b["obs"]), self.fixes.obs(b["next_obs"])
        rew = self.fixes.reward(b["rew"])
        update = self._update_batched if self.batched else self._update_per_agent
        stats, nonfinite = update(b, obs, next_obs, rew, self._inject_nonfinite())
        if not all_finite(self._all_params):
            self._record_nonfinite("all", "parameters", torch.tensor(float("nan")), b)
            raise NonFiniteParameters(f"non-finite parameters after update {self.updates}")
        # Soft target updates of every network in one fused call: target <- target + tau * (online - target).
        with torch.no_grad():
            torch._foreach_lerp_(self._soft_pairs[0], self._soft_pairs[1], self.hp.tau)
            if self._buffer_pairs[0]:
                torch._foreach_copy_(self._buffer_pairs[0], self._buffer_pairs[1])
        stats["health/nonfinite_updates"] = float(nonfinite)
        stats["reward/learner_scale"] = self.fixes.reward.scale()
        return stats

    def _update_per_agent(self, b: dict[str, torch.Tensor], obs: torch.Tensor, next_obs: torch.Tensor, rew: torch.Tensor,
                          inject: bool) -> tuple[dict[str, float], int]:
        """The general update: one agent at a time (any obs/action sizes, BatchNorm)."""
        sd = self.spec
        joint_obs, joint_next = self._joint(obs, sd.obs_dims), self._joint(next_obs, sd.obs_dims)
        joint_act = self._joint(b["act"], sd.act_dims)
        with torch.no_grad():
            next_acts = []
            for i, ta in enumerate(self.target_actors):
                a, _ = ta(self._agent_obs(next_obs, i))
                next_acts.append(one_hot_argmax(a) if sd.discrete[i] else a)
            joint_next_act = torch.cat(next_acts, dim=-1)
        stats: dict[str, float] = {}
        nonfinite = 0
        for i, name in enumerate(sd.agents):
            critic, actor = self.critics[i], self.actors[i]
            # ---- critic: y = r + gamma * (1 - terminated) * Q'_i(o', mu'(o'))
            with torch.no_grad():
                target_q = self.target_critics[i](joint_next, joint_next_act)
                y = rew[:, i] + self.hp.gamma * (1.0 - b["term"][:, i]) * target_q
            self._set_mode(critic, True)
            q = critic(joint_obs, joint_act)
            critic_loss = self._critic_loss_fn(q, y)
            if inject:
                critic_loss = critic_loss * float("nan")
            c_clip, c_ok = self._step(critic_loss, self.critic_opts[i], self._critic_params[i], self.fixes.critic_clip,
                                      f"critic/{name}", b)
            # ---- actor: maximize Q_i(o, a_1..mu_i(o_i)..a_N) with the others' actions from the buffer
            self._set_mode(actor, True)
            out, pre = actor(self._agent_obs(obs, i))
            if sd.discrete[i]:
                out = gumbel_softmax_hard(out, self.hp.gumbel_temperature, self.gen)
            out.retain_grad()  # d(actor loss)/d(action) = -dQ/da / batch: the critic's pull on the actor
            acts = [b["act"][:, j, : sd.act_dims[j]] for j in range(sd.num_agents)]
            acts[i] = out
            self._set_mode(critic, False)
            actor_q = critic(joint_obs, torch.cat(acts, dim=-1))
            actor_loss = -actor_q.mean() + self.fixes.preact_penalty(pre)
            a_clip, a_ok = self._step(actor_loss, self.actor_opts[i], self._actor_params[i], self.fixes.actor_clip,
                                      f"actor/{name}", b)
            critic.zero_grad(set_to_none=True)  # the actor loss also reached the critic's parameters
            nonfinite += (not c_ok) + (not a_ok)
            stats[f"loss/critic/{name}"] = float(critic_loss.detach())
            stats[f"loss/actor/{name}"] = float(actor_loss.detach())
            stats[f"grad_norm/critic/{name}"] = c_clip.pre_norm
            stats[f"grad_norm/actor/{name}"] = a_clip.pre_norm
            stats[f"grad_norm_postclip/critic/{name}"] = c_clip.post_norm
            stats[f"grad_norm_postclip/actor/{name}"] = a_clip.post_norm
            q_d = q.detach()
            td = (q_d - y).abs()
            dq_da = out.grad.norm(dim=-1).mean() * out.shape[0] if out.grad is not None else torch.tensor(float("nan"))
            values = torch.stack([q_d.mean(), q_d.min(), q_d.max(), y.mean(), td.mean(), td.max(), dq_da,
                                  pre.detach().abs().max(), b["rew"][:, i].mean(), rew[:, i].mean(),
                                  b["rew"][:, i].std(), rew[:, i].std()]).tolist()
            for key, v in zip(self._STAT_KEYS, values):
                stats[f"{key}/{name}"] = v
        return stats, nonfinite

    def _update_batched(self, b: dict[str, torch.Tensor], obs: torch.Tensor, next_obs: torch.Tensor, rew: torch.Tensor,
                        inject: bool) -> tuple[dict[str, float], int]:
        """The same update for identical agents, every network evaluated for all agents in one stacked call.

        Agent i's critic loss reaches only critic i and its actor loss only actor i; the actor loss goes through
        critic i's weights detached (the per-agent loop computes and then discards those gradients). All critics
        step before the actors' forward, as in the loop, where critic i steps before actor i uses it.
        """
        sd = self.spec
        n, batch = sd.num_agents, obs.shape[0]
        act = b["act"]  # [B, N, d]: every agent's action fills its slot (no padding when the sizes agree)
        joint_obs = obs.reshape(batch, -1)
        critic_in = torch.cat([joint_obs, act.reshape(batch, -1)], dim=-1)
        with torch.no_grad():
            target_q = self._stacked_q(self._target_critic_stack, next_obs,
                                       self._stacked_greedy(self._target_actor_stack, next_obs))
            y = rew.T + self.hp.gamma * (1.0 - b["term"].T) * target_q  # [N, B]
        # ---- critics
        q = self._critic_stack(critic_in)  # [N, B]
        critic_losses = self._critic_loss_fn(q, y, reduction="none").mean(dim=1)
        if inject:
            critic_losses = critic_losses * float("nan")
        c_clips, c_oks, _ = self._step_all(critic_losses, self.critic_opts, self._critic_params, self.fixes.critic_clip,
                                           "critic", b)
        # ---- actors: agent i maximizes Q_i(o, a_1..mu_i(o_i)..a_N), the others' actions from the buffer
        out, pre = self._actor_stack(obs.transpose(0, 1))  # [N, B, d]
        if self._actor_stack.discrete:
            out = gumbel_softmax_hard(out, self.hp.gumbel_temperature, self.gen)
        out.retain_grad()  # d(actor loss)/d(action) = -dQ/da / batch: the critic's pull on the actor
        # Critic i's joint action: the buffer's, with agent i's slot taken by actor i's output.
        with torch.no_grad():
            critic_params = self._critic_stack.mlp.stacked()
            others = torch.where(self._own_slot, 0.0, act.unsqueeze(0)).reshape(n, batch, -1)  # own slot zeroed
            x_others = torch.cat([joint_obs.expand(n, -1, -1), others], dim=-1)
        if self._critic_stack.mlp.first_is_residual:
            own = torch.zeros_like(x_others)
            own[self._rows, :, self._own_cols] = out.transpose(1, 2)  # [N, d, B] into each own slot
            actor_q = self._critic_stack(x_others + own, critic_params)
        else:
            # First layer = (everything but agent i's action) W_i + a_i W_i[own columns]: only the small second
            # product is differentiated.
            w0, b0 = critic_params[0][0], critic_params[0][1]
            h0 = torch.baddbmm(b0, x_others, w0)
            h0 = torch.baddbmm(h0, out, w0[self._rows, self._own_cols])  # [N, B, d] @ [N, d, hidden]
            actor_q = self._critic_stack(None, critic_params, first_linear=h0)
        actor_losses = -actor_q.mean(dim=1) + self.fixes.preact_penalty.per_agent(pre)
        a_clips, a_oks, a_finite = self._step_all(actor_losses, self.actor_opts, self._actor_params, self.fixes.actor_clip,
                                                  "actor", b)
        for ps in self._critic_params:  # as in the loop, no critic gradient outlives the update
            for p in ps:
                p.grad = None
        nan = torch.full((n,), float("nan"))
        dq_da = out.grad.norm(dim=-1).mean(dim=1) * batch if out.grad is not None else nan
        dq_da = torch.where(torch.tensor(a_finite), dq_da, nan)  # no backward for that agent: as in the loop
        q_d = q.detach()
        td = (q_d - y).abs()
        raw = b["rew"]
        values = torch.stack([q_d.mean(1), q_d.amin(1), q_d.amax(1), y.mean(1), td.mean(1), td.amax(1), dq_da,
                              pre.detach().abs().flatten(1).amax(1), raw.mean(0), rew.mean(0), raw.std(0),
                              rew.std(0)]).T.tolist()
        losses = torch.stack([critic_losses.detach(), actor_losses.detach()]).T.tolist()
        stats: dict[str, float] = {}
        for i, name in enumerate(sd.agents):
            stats[f"loss/critic/{name}"], stats[f"loss/actor/{name}"] = losses[i]
            stats[f"grad_norm/critic/{name}"] = c_clips[i].pre_norm
            stats[f"grad_norm/actor/{name}"] = a_clips[i].pre_norm
            stats[f"grad_norm_postclip/critic/{name}"] = c_clips[i].post_norm
            stats[f"grad_norm_postclip/actor/{name}"] = a_clips[i].post_norm
            for key, v in zip(self._STAT_KEYS, values[i]):
                stats[f"{key}/{name}"] = v
        nonfinite = sum(not ok for ok in c_oks) + sum(not ok for ok in a_oks)
        return stats, nonfinite

    # ------------------------------------------------------------------ checkpointing
    _NETWORK_GROUPS = ("actors", "critics", "target_actors", "target_critics", "actor_opts", "critic_opts")

    def _groups(self) -> dict[str, list[Any]]:
        return {"actors": self.actors, "critics": self.critics, "target_actors": self.target_actors,
                "target_critics": self.target_critics, "actor_opts": self.actor_opts, "critic_opts": self.critic_opts}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {k: [o.state_dict() for o in objs] for k, objs in self._groups().items()}
        state.update({
            "obs_norm": self.fixes.obs.state_dict(),
            "reward_transform": self.fixes.reward.state_dict(),
            "buffer": self.buffer.state_dict(),
            "torch_gen": self.gen.get_state(),
            "np_rng": self.rng.bit_generator.state,
            "counters": {"env_steps": self.env_steps, "updates": self.updates, "updates_owed": self._updates_owed},
        })
        return state

    def _load_groups(self, state: dict[str, Any]) -> None:
        for key, objs in self._groups().items():
            for obj, sd in zip(objs, state[key], strict=True):
                obj.load_state_dict(sd)
        for opt in self.actor_opts + self.critic_opts:
            # A checkpoint's param groups carry the implementation flags it was saved with (older ones: the
            # default per-tensor loop); keep this build's faster implementation of the same update rule.
            for group in opt.param_groups:
                for key in ("foreach", "fused"):
                    if key in opt.defaults:
                        group[key] = opt.defaults[key]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_groups(state)
        self.fixes.obs.load_state_dict(state["obs_norm"])
        self.fixes.reward.load_state_dict(state["reward_transform"])
        self.buffer.load_state_dict(state["buffer"])
        self.gen.set_state(state["torch_gen"])
        self.rng.bit_generator.state = state["np_rng"]
        c = state["counters"]
        self.env_steps, self.updates, self._updates_owed = int(c["env_steps"]), int(c["updates"]), float(c["updates_owed"])

    def snapshot(self) -> dict[str, Any]:
        """In-memory copy of networks, targets and optimizers: what a rollback restores (not the replay
        buffer, normalizer statistics or RNGs, which carry no non-finite values)."""
        return copy.deepcopy({k: [o.state_dict() for o in objs] for k, objs in self._groups().items()})

    def restore(self, snap: dict[str, Any]) -> None:
        self._load_groups(copy.deepcopy(snap))

    def modules(self) -> dict[str, torch.nn.Module]:
        """Named networks (for instrumentation and the monitor)."""
        out: dict[str, torch.nn.Module] = {}
        for name, a, c in zip(self.spec.agents, self.actors, self.critics):
            out[f"actor/{name}"] = a
            out[f"critic/{name}"] = c
        return out
