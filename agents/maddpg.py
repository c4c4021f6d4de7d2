"""MADDPG (Lowe et al. 2017): decentralized deterministic actors, one centralized critic per agent.

Data in and out is batched: observations ``[num_envs, num_agents, max_obs_dim]``, actions
``[num_envs, num_agents, max_act_dim]`` (continuous: the Box action; discrete: a one-hot vector). It
implements ``marl_stability.agents.base.Algorithm``; how it acts and updates (one agent at a time or all agents stacked)
is a strategy chosen once (``agents.ddpg_updates``). MATD3 (``marl_stability.agents.matd3``) is this class with twin
critics, target-policy smoothing and delayed actor updates switched on.

Defaults follow openai/maddpg (Adam 1e-2, gamma 0.95, tau 0.01, batch 1024, two 64-unit ReLU layers, one
update every 100 env steps after 1024*25 warm-up steps); its per-tensor clip 0.5 and pre-activation
penalty 1e-3 are available as fixes but off by default, so the failure can be studied.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from marl_stability.agents.base import Algorithm
from marl_stability.agents.buffer import ReplayBuffer
from marl_stability.agents.faults import nonfinite_injected
from marl_stability.agents.stats import agent_stats
from marl_stability.agents.ddpg_updates import (
    STAT_KEYS,
    PerAgentUpdate,
    StackedUpdate,
    ddpg_feature_probes,
)
from marl_stability.agents.networks import (
    CONTINUOUS_HEADS,
    Actor,
    Critic,
    head_kind,
    stack_incompatibility,
)
from marl_stability.agents.optim import (
    keep_fast_kernels,
    make_optimizer,
    retuned,
)
from marl_stability.envs.vector import AgentLayout

from marl_stability.core.plasticity import FeatureProbe
from marl_stability.errors import UserError

# The algorithm sees the agents exactly as the environment describes them: names, true obs/action sizes,
# discrete flags and bounds (padded to the batched layout).
AgentSpec = AgentLayout


def set_training(module: torch.nn.Module, training: bool) -> None:
    """module.train(training), skipped when already in that mode (the recursive call is costly per step)."""
    if module.training != training:
        module.train(training)


def _no_mode_switch(module: torch.nn.Module, training: bool) -> None:
    """Networks without BatchNorm/Dropout compute the same in train and eval mode: nothing to switch."""


def has_mode_dependent_layers(modules: list[torch.nn.Module]) -> bool:
    kinds = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)
    return any(isinstance(sub, kinds) for m in modules for sub in m.modules())


def check_ddpg_layout(name: str, cfg: Any, layout: AgentLayout) -> None:
    """Continuous agents need finite bounds; continuous-only heads need continuous actions."""
    low, high = np.asarray(layout.act_low), np.asarray(layout.act_high)
    unbounded = [n for i, n in enumerate(layout.agents) if not layout.discrete[i]
                 and not np.isfinite(high[i, : layout.act_dims[i]] - low[i, : layout.act_dims[i]]).all()]
    if unbounded:
        raise UserError(f"agents {', '.join(unbounded)} of {cfg.env.id} have unbounded Box actions; {name.upper()} "
                        "here needs finite bounds (exploration noise and output heads are scaled by the action range)")
    if any(layout.discrete) and cfg.actor.output in CONTINUOUS_HEADS:
        bad = [n for n, d in zip(layout.agents, layout.discrete) if d]
        raise UserError(
            f"actor.output={cfg.actor.output} needs continuous actions, but {cfg.env.id} has discrete actions "
            f"for {', '.join(bad)} (use actor.output=auto or env.kwargs.continuous_actions=true)"
        )


def batching_obstacle(sd: AgentLayout, actors: list[Actor], critics: list[Critic]) -> str | None:
    """Why these agents' networks cannot be evaluated as one stack (None when they can)."""
    if len(set(sd.obs_dims)) > 1:
        return f"the agents' observation sizes differ ({dict(zip(sd.agents, sd.obs_dims))})"
    if len(set(sd.act_dims)) > 1:
        return f"the agents' action sizes differ ({dict(zip(sd.agents, sd.act_dims))})"
    if len(set(sd.discrete)) > 1:
        return "some agents have discrete and some continuous actions"
    for what, nets in (("actor", actors), ("critic", critics)):
        reason = stack_incompatibility([m.mlp for m in nets])
        if reason is not None:
            return f"the {what}s have {reason}" + (f" ({what}.norm=batchnorm)" if "BatchNorm" in reason else "")
    return None


def critic_loss_of(hp: Any) -> Callable[..., torch.Tensor]:
    """The critic loss of ``maddpg.critic_loss``: mean over the batch by default; the stacked update asks for
    reduction="none" and averages per agent."""
    return F.mse_loss if hp.critic_loss == "mse" else functools.partial(F.huber_loss, delta=hp.huber_delta)


class TwinCritic(torch.nn.Module):
    """An agent's critics as one network for its optimizer, clipping and gradient statistics (MATD3)."""

    def __init__(self, critics: list[Critic]) -> None:
        super().__init__()
        self.q = torch.nn.ModuleList(critics)


class MADDPG(Algorithm):
    name = "maddpg"
    stat_prefixes = tuple(f"{k}/" for k in STAT_KEYS)
    resume_only = ("buffer",)
    live_keys = ("actor_optim.", "critic_optim.", "actor.output", "actor.last_layer_init", "maddpg.critic_loss",
                 "maddpg.huber_delta")
    num_critics = 1  # per agent; MATD3: 2

    def __init__(self, cfg: Any, spec: AgentLayout, fixes: Any, events: Any = None) -> None:
        super().__init__(cfg, spec, fixes, events)
        self.hp = cfg.maddpg
        torch.manual_seed(cfg.seed)  # network init
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)  # exploration, Gumbel, warm-up actions, smoothing
        self.rng = np.random.default_rng(cfg.seed + 2)  # replay sampling
        self.low = torch.tensor(np.array(spec.act_low), dtype=torch.float32)
        self.high = torch.tensor(np.array(spec.act_high), dtype=torch.float32)
        self._build_networks()
        self.batched = self._resolve_batched(self.hp.batched_agents)
        self.actor_opts = [make_optimizer(m.parameters(), cfg.actor_optim, self.batched) for m in self.actors]
        self.critic_opts = [make_optimizer(m.parameters(), cfg.critic_optim, self.batched) for m in self.critic_units]
        self.strategy = StackedUpdate(self) if self.batched else PerAgentUpdate(self)
        self.buffer = ReplayBuffer(self.hp.buffer_size, spec.num_agents, spec.max_obs_dim, spec.max_act_dim)
        self.env_steps = 0
        self._updates_owed = 0.0
        self._last_batch: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None  # (batch, normalized obs)
        self._modules = {f"{kind}/{name}": m for name, actor, critic in zip(spec.agents, self.actors, self.critic_units)
                         for kind, m in (("actor", actor), ("critic", critic))}
        self.stepper.modules = self._modules
        self._actor_stepped = False
        self.critic_loss_fn = critic_loss_of(self.hp)

    def _build_networks(self) -> None:
        cfg, spec, n = self.cfg, self.spec, self.spec.num_agents
        a, c = cfg.actor, cfg.critic
        self.actors = [
            Actor(spec.obs_dims[i], spec.act_dims[i], spec.discrete[i], a.hidden_sizes, a.activation, a.norm,
                  a.residual, a.init, a.last_layer_init, a.output, self.low[i, : spec.act_dims[i]],
                  self.high[i, : spec.act_dims[i]])
            for i in range(n)
        ]
        critic_in = sum(spec.obs_dims) + sum(spec.act_dims)
        self.critic_groups = [
            [Critic(critic_in, c.hidden_sizes, c.activation, c.norm, c.residual, c.init, c.last_layer_init) for _ in range(n)]
            for _ in range(self.num_critics)
        ]
        self.critics = self.critic_groups[0]
        self.critic_units = self.critics if self.num_critics == 1 else [
            TwinCritic([g[i] for g in self.critic_groups]) for i in range(n)]
        self.target_actors = [copy.deepcopy(m).eval() for m in self.actors]
        self.target_critic_groups = [[copy.deepcopy(m).eval() for m in g] for g in self.critic_groups]
        self.target_critics = self.target_critic_groups[0]
        all_critics = [m for g in self.critic_groups for m in g]
        all_targets = [m for g in self.target_critic_groups for m in g]
        for m in self.target_actors + all_targets:
            m.requires_grad_(False)
        # Parameter objects never change (load_state_dict copies in place): collect them once.
        self.actor_params = [list(m.parameters()) for m in self.actors]
        self.critic_params = [list(m.parameters()) for m in self.critic_units]
        self._all_params = [p for ps in self.actor_params + self.critic_params for p in ps]
        online, targets = self.actors + all_critics, self.target_actors + all_targets
        self._soft_pairs = ([p for m in targets for p in m.parameters()], [p for m in online for p in m.parameters()])
        self._buffer_pairs = ([b for m in targets for b in m.buffers()], [b for m in online for b in m.buffers()])
        self.set_mode = set_training if has_mode_dependent_layers(online) else _no_mode_switch

    @classmethod
    def check_layout(cls, cfg: Any, layout: AgentLayout) -> None:
        check_ddpg_layout(cls.name, cfg, layout)

    def batching_obstacle(self) -> str | None:
        """Why the agents' networks cannot be evaluated as one stack (None when they can)."""
        return batching_obstacle(self.spec, self.actors, self.critics)

    def _resolve_batched(self, mode: str) -> bool:
        if mode == "off":
            return False
        reason = self.batching_obstacle()
        if reason is not None and mode == "on":
            raise UserError(f"maddpg.batched_agents=on is impossible here: {reason}; use auto (batched when possible) or off")
        return reason is None

    # ------------------------------------------------------------------ acting
    def agent_obs(self, obs: torch.Tensor, i: int) -> torch.Tensor:
        return obs[..., i, : self.spec.obs_dims[i]]

    def pad_actions(self, per_agent: list[torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(per_agent[0].shape[0], self.spec.num_agents, self.spec.max_act_dim)
        for i, a in enumerate(per_agent):
            out[:, i, : a.shape[-1]] = a
        return out

    def random_actions(self, num_envs: int) -> torch.Tensor:
        acts = []
        for i in range(self.spec.num_agents):
            d = self.spec.act_dims[i]
            if self.spec.discrete[i]:
                acts.append(F.one_hot(torch.randint(0, d, (num_envs,), generator=self.gen), d).float())
            else:
                u = torch.rand(num_envs, d, generator=self.gen)
                acts.append(self.low[i, :d] + u * (self.high[i, :d] - self.low[i, :d]))
        return self.pad_actions(acts)

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Actions for a batch of env copies; uniform random during warm-up when exploring."""
        if explore and self.env_steps < self.hp.warmup_steps:
            return self.random_actions(obs.shape[0]).numpy()
        return self.strategy.act(self.fixes.obs(torch.as_tensor(obs, dtype=torch.float32)), explore)

    def policy_fn(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
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
        return self.strategy.q_values(self.fixes.obs(torch.as_tensor(obs, dtype=torch.float32)))

    def value_estimates(self, obs: np.ndarray) -> np.ndarray:
        return self.q_values(obs)

    def preactivations(self, i: int, obs_i: torch.Tensor) -> torch.Tensor:
        self.set_mode(self.actors[i], False)
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
    def actor_step_due(self) -> bool:
        """Whether this update also steps the actors and the targets (MATD3 delays them)."""
        return True

    def smooth_target(self, i: int, action: torch.Tensor) -> torch.Tensor:
        """Agent i's target action as the TD target uses it (MATD3 adds clipped noise)."""
        return action

    def smooth_target_stacked(self, actions: torch.Tensor) -> torch.Tensor:
        """``smooth_target`` of all agents' stacked target actions [N, B, d]."""
        return actions

    @staticmethod
    def min_over_critics(qs: list[torch.Tensor]) -> torch.Tensor:
        """The TD target's value: the one critic's, or the minimum over an agent's critics."""
        return qs[0] if len(qs) == 1 else torch.stack(qs).amin(0)

    def learn(self) -> dict[str, float]:
        """One gradient update of every critic (and actor, when due); the soft target updates follow in
        ``finish_update`` once the parameters are known to be finite."""
        b = self.buffer.sample(self.hp.batch_size, self.rng)
        self.stepper.use_batch(b)
        obs, next_obs = self.fixes.obs(b["obs"]), self.fixes.obs(b["next_obs"])
        self._last_batch = (b, obs)
        rew = self.fixes.reward(b["rew"])
        self._actor_stepped = self.actor_step_due()
        values = self.strategy.update(b, obs, next_obs, rew, nonfinite_injected(self.cfg, self.updates),
                                      self._actor_stepped)
        return agent_stats(self.spec.agents, values)

    def finish_update(self) -> None:
        if self._actor_stepped:
            # Soft target updates of every network in one fused call: target <- target + tau * (online - target).
            with torch.no_grad():
                torch._foreach_lerp_(self._soft_pairs[0], self._soft_pairs[1], self.hp.tau)
                if self._buffer_pairs[0]:
                    torch._foreach_copy_(self._buffer_pairs[0], self._buffer_pairs[1])

    # ------------------------------------------------------------------ checkpointing
    def _groups(self) -> dict[str, list[Any]]:
        groups = {"actors": self.actors, "critics": self.critics, "target_actors": self.target_actors,
                  "target_critics": self.target_critics, "actor_opts": self.actor_opts, "critic_opts": self.critic_opts}
        for g in range(1, self.num_critics):
            groups[f"critics{g + 1}"] = self.critic_groups[g]
            groups[f"target_critics{g + 1}"] = self.target_critic_groups[g]
        return groups

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
        keep_fast_kernels(self.actor_opts + self.critic_opts)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_groups(state)
        self.fixes.obs.load_state_dict(state["obs_norm"])
        self.fixes.reward.load_state_dict(state["reward_transform"])
        if "buffer" in state:  # absent from a finished run's final checkpoint (resume_only)
            self.buffer.load_state_dict(state["buffer"])
        self.gen.set_state(state["torch_gen"])
        self.rng.bit_generator.state = state["np_rng"]
        c = state["counters"]
        self.env_steps, self.updates, self._updates_owed = int(c["env_steps"]), int(c["updates"]), float(c["updates_owed"])

    def reconfigure(self, cfg: Any, changed: list[str]) -> None:
        adopt_live(self, cfg, changed)

    def snapshot(self) -> dict[str, Any]:
        """In-memory copy of networks, targets and optimizers: what a rollback restores (not the replay buffer,
        normalizer statistics or RNGs)."""
        return copy.deepcopy({k: [o.state_dict() for o in objs] for k, objs in self._groups().items()})

    def restore(self, snap: dict[str, Any]) -> None:
        self._load_groups(copy.deepcopy(snap))

    def modules(self) -> dict[str, torch.nn.Module]:
        """Named networks (for instrumentation): ``actor/<agent>``, ``critic/<agent>`` (MATD3: both critics)."""
        return dict(self._modules)

    def feature_probes(self, max_rows: int) -> list[FeatureProbe]:
        return [] if self._last_batch is None else ddpg_feature_probes(self, *self._last_batch, max_rows)


def reinit_last_layers(algo: MADDPG, bound: float) -> None:
    """The small last-layer init applied to a running MADDPG: every actor's output layer drawn again from
    U(-bound, bound) (a generator seeded by the run seed and the update count: no global random numbers), copied to
    its target actor, and that layer's optimizer state dropped."""
    gen = torch.Generator().manual_seed(algo.cfg.seed * 1_000_003 + algo.updates)
    for actor, target, opt in zip(algo.actors, algo.target_actors, algo.actor_opts):
        for p, tp in ((actor.mlp.out.weight, target.mlp.out.weight), (actor.mlp.out.bias, target.mlp.out.bias)):
            with torch.no_grad():
                p.uniform_(-bound, bound, generator=gen)
                tp.copy_(p)
            opt.state.pop(p, None)


def adopt_live(algo: MADDPG, cfg: Any, changed: list[str]) -> None:
    """``MADDPG.reconfigure`` (``train.heal`` applying a fix): optimizers follow ``actor_optim``/``critic_optim``
    (:func:`retuned`), the output head kind follows ``actor.output`` (the head has no parameters),
    ``actor.last_layer_init`` re-initialises every actor's last layer (:func:`reinit_last_layers`), the critic loss
    follows ``maddpg.critic_loss``/``huber_delta``."""
    algo.cfg, algo.hp = cfg, cfg.maddpg
    for kind, opts, units in (("actor", algo.actor_opts, algo.actors), ("critic", algo.critic_opts, algo.critic_units)):
        if any(k.startswith(f"{kind}_optim.") for k in changed):
            opts[:] = [retuned(o, m.parameters(), getattr(cfg, f"{kind}_optim"), algo.batched) for o, m in zip(opts, units)]
    for actor in algo.actors + algo.target_actors:
        if "actor.output" in changed and actor.head is not None:
            actor.head.kind = head_kind(cfg.actor.output)
    if "actor.last_layer_init" in changed and cfg.actor.last_layer_init is not None:
        reinit_last_layers(algo, float(cfg.actor.last_layer_init))
    algo.critic_loss_fn = critic_loss_of(algo.hp)
    algo.strategy = StackedUpdate(algo) if algo.batched else PerAgentUpdate(algo)  # the stacks read the heads
