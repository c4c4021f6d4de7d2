"""PPO for many agents: the common core of MAPPO and IPPO (``marl_stability.agents.mappo``), against the Algorithm interface.

Rollouts come from the run's B env copies (``env.num_envs``): ``act`` samples every agent's action and
records its log-probability and the critic's value; ``observe`` stores the step (bootstrapping from the
final observation where an episode was truncated); when ``ppo.rollout_steps`` steps are in,
``pending_updates`` asks for one update, which computes GAE(lambda) and runs ``ppo.epochs`` x
``ppo.minibatches`` clipped-surrogate / value steps through the ``GradientStepper`` (so clipping fixes,
gradient statistics, detectors and forensics apply as for MADDPG). Subclasses say what the critic sees.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar, Optional

import numpy as np
import torch
from marl_stability.agents.base import Algorithm
from marl_stability.agents.faults import nonfinite_injected
from marl_stability.agents.stats import agent_stats
from marl_stability.agents.distributions import ActionHead
from marl_stability.agents.networks import feature_probe
from marl_stability.agents.optim import (
    make_optimizer,
    retuned,
)
from marl_stability.agents.ppo_losses import UpdateAccumulator
from marl_stability.agents.ppo_networks import (
    PolicyGroup,
    PolicyNet,
    ValueNet,
    ValueNormalizer,
)
from marl_stability.agents.ppo_rollout import Rollout
from marl_stability.agents.ppo_update import PPOUpdate
from marl_stability.envs.vector import AgentLayout

from marl_stability.core.plasticity import FeatureProbe, even_rows

STAT_PREFIXES = ("loss/policy/", "loss/value/", "policy/", "value/",
                 "reward/raw_batch_", "reward/learner_batch_", "reward/learner_scale", "health/nonfinite_updates")


def homogeneous(layout: AgentLayout) -> bool:
    """Same observation and action sizes, action type and bounds for every agent (parameter sharing possible)."""
    low, high = np.asarray(layout.act_low), np.asarray(layout.act_high)
    same_bounds = bool(np.array_equal(low, low[:1].repeat(len(low), 0)) and np.array_equal(high, high[:1].repeat(len(high), 0)))
    return len(set(layout.obs_dims)) == 1 and len(set(layout.act_dims)) == 1 and len(set(layout.discrete)) == 1 and same_bounds


class PPO(Algorithm):
    """The shared core; ``centralized`` (class attribute) chooses the critic's input."""

    stat_prefixes = STAT_PREFIXES
    on_policy = True
    centralized: ClassVar[bool] = False
    live_keys = ("actor_optim.", "critic_optim.", "ppo.entropy_coef", "ppo.epochs", "ppo.value_loss", "ppo.value_clip",
                 "ppo.huber_delta", "ppo.advantage_norm", "ppo.log_std_bounds")

    def __init__(self, cfg: Any, spec: AgentLayout, fixes: Any, events: Any = None) -> None:
        super().__init__(cfg, spec, fixes, events)
        self.hp = cfg.ppo
        torch.manual_seed(cfg.seed)  # network init
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)  # action sampling, entropy estimates
        self.rng = np.random.default_rng(cfg.seed + 2)  # minibatch shuffling
        self.low = torch.tensor(np.array(spec.act_low), dtype=torch.float32)
        self.high = torch.tensor(np.array(spec.act_high), dtype=torch.float32)
        self.sharing = self.hp.parameter_sharing == "on" or (self.hp.parameter_sharing == "auto" and homogeneous(spec))
        self.groups = [self._build_group(a) for a in ([list(range(spec.num_agents))] if self.sharing
                                                      else [[i] for i in range(spec.num_agents)])]
        self._modules = {f"{kind}/{g.name}": m for g in self.groups for kind, m in (("actor", g.actor), ("critic", g.critic))}
        self.stepper.modules = self._modules
        self.eye = torch.eye(spec.num_agents)
        self.rollout = Rollout(self.hp.rollout_steps, cfg.env.num_envs, spec.num_agents, spec.max_obs_dim,
                               spec.max_act_dim)
        self._pending: Optional[dict[str, np.ndarray]] = None  # what act(explore=True) chose, for observe
        self.env_steps = 0
        self.learner = PPOUpdate(self)
        self._last_obs: Optional[torch.Tensor] = None  # the last update's rollout observations (normalized)

    def distribution_kind(self, i: int) -> str:
        if self.spec.discrete[i]:
            return "categorical"
        return "gaussian" if self.hp.distribution == "auto" else self.hp.distribution

    def _build_group(self, agents: list[int]) -> PolicyGroup:
        cfg, sd, hp = self.cfg, self.spec, self.hp
        i = agents[0]
        d, od = sd.act_dims[i], sd.obs_dims[i]
        head = ActionHead(self.distribution_kind(i), d, self.low[i, :d], self.high[i, :d],
                          hp.log_std == "state_dependent", hp.log_std_init,
                          None if hp.log_std_bounds is None else tuple(hp.log_std_bounds))
        ids = sd.num_agents if self.sharing else 0
        critic_in = (sum(sd.obs_dims) if self.centralized else od) + ids
        actor = PolicyNet(od + ids, head, cfg.actor, hp.input_layernorm, hp.actor_output_gain)
        critic = ValueNet(critic_in, cfg.critic, hp.input_layernorm)
        return PolicyGroup("shared" if self.sharing else sd.agents[i], agents, od, d, sd.discrete[i], self.sharing,
                           actor, critic, make_optimizer(actor.parameters(), cfg.actor_optim),
                           make_optimizer(critic.parameters(), cfg.critic_optim),
                           ValueNormalizer() if hp.value_norm else None)

    # ------------------------------------------------------------------ network inputs
    def actor_input(self, g: PolicyGroup, o: torch.Tensor) -> torch.Tensor:
        """Normalized joint observations [M, N, D] -> the group's actor inputs [M * n_g, in] (agent-minor)."""
        x = o[:, g.index, : g.obs_dim]
        if g.shared:
            x = torch.cat([x, self.eye.expand(o.shape[0], -1, -1)], dim=-1)
        return x.reshape(-1, x.shape[-1])

    def global_state(self, o: torch.Tensor) -> torch.Tensor:
        """The centralized value's input: every agent's observation, concatenated [M, sum obs_dims] (mpe2's
        ``state()`` is exactly this concatenation)."""
        return torch.cat([o[:, i, :d] for i, d in enumerate(self.spec.obs_dims)], dim=-1)

    def critic_input(self, g: PolicyGroup, o: torch.Tensor) -> torch.Tensor:
        if not self.centralized:
            return self.actor_input(g, o)
        s = self.global_state(o)
        x = s.unsqueeze(1).expand(-1, len(g.agents), -1)
        if g.shared:
            x = torch.cat([x, self.eye.expand(o.shape[0], -1, -1)], dim=-1)
        return x.reshape(-1, x.shape[-1])

    def _values(self, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values in learner units, the critics' raw outputs), both [M, N], at normalized observations."""
        m = o.shape[0]
        raw, values = torch.zeros(m, self.spec.num_agents), torch.zeros(m, self.spec.num_agents)
        for g in self.groups:
            out = g.critic(self.critic_input(g, o)).reshape(m, len(g.agents))
            raw[:, g.index], values[:, g.index] = out, g.to_values(out)
        return values, raw

    # ------------------------------------------------------------------ acting and storing
    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Sampled actions (explore: remembered with their log-probabilities and values for ``observe``) or
        greedy ones (evaluation). Non-finite actor outputs give NaN actions: the loop's non-finite handling."""
        sd = self.spec
        o = self.fixes.obs(torch.as_tensor(obs, dtype=torch.float32))
        e = o.shape[0]
        out = torch.zeros(e, sd.num_agents, sd.max_act_dim)
        stored, log_prob = torch.zeros(e, sd.num_agents, sd.max_act_dim), torch.zeros(e, sd.num_agents)
        for g in self.groups:
            dist, raw = g.actor.dist(self.actor_input(g, o))
            n = len(g.agents)
            if not bool(torch.isfinite(raw).all()):
                return np.full(out.shape, np.nan, np.float32)
            if explore:
                x = dist.sample(self.gen)
                action = dist.env_action(x)
                stored[:, g.index, : g.stored_dim] = x.reshape(e, n, -1)
                log_prob[:, g.index] = dist.log_prob(x).reshape(e, n)
            else:
                action = dist.greedy()
                if g.discrete:
                    action = torch.nn.functional.one_hot(action.argmax(-1), g.act_dim).float()
            out[:, g.index, : g.act_dim] = action.reshape(e, n, -1)
        if explore:
            values, raw_values = self._values(o)
            self._pending = {"obs": o.numpy(), "actions": stored.numpy(), "log_prob": log_prob.numpy(),
                             "values": values.numpy(), "values_norm": raw_values.numpy()}
        return out.numpy()

    def observe(self, obs: np.ndarray, actions: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
                terminated: np.ndarray, done: np.ndarray) -> None:
        """Store one step of the rollout; the value of the final observation where an episode ended (and of
        every copy's next observation at the rollout's last step) is the GAE bootstrap."""
        step, self._pending = self._pending, None
        if step is None:
            raise RuntimeError("observe() needs the preceding act(obs, explore=True) of the same step")
        need = np.ones(obs.shape[0], bool) if self.rollout.ptr == self.rollout.steps - 1 else np.asarray(done, bool)
        bootstrap = np.zeros(reward.shape, np.float32)
        if need.any():
            with torch.no_grad():
                final = self.fixes.obs(torch.as_tensor(next_obs[need], dtype=torch.float32))
                bootstrap[need] = self._values(final)[0].numpy()
        self.rollout.add(obs=step["obs"], actions=step["actions"], log_prob=step["log_prob"], values=step["values"],
                         values_norm=step["values_norm"], reward=reward, terminated=terminated, done=done,
                         bootstrap=bootstrap)
        self.fixes.obs.update(obs)
        self.fixes.reward.update(reward, done)
        self.env_steps += obs.shape[0]

    def pending_updates(self) -> int:
        return 1 if self.rollout.full else 0

    # ------------------------------------------------------------------ learning
    def learn(self) -> dict[str, float]:
        """GAE over the full rollout, then epochs x minibatches of PPO steps; the rollout starts anew."""
        batch, stats = self.learner.prepare()
        self.stepper.use_batch(batch)
        self._last_obs = batch["obs"]
        acc, m = UpdateAccumulator(self.spec.num_agents), batch["obs"].shape[0]
        inject = nonfinite_injected(self.cfg, self.updates)
        for _ in range(self.hp.epochs):
            perm = torch.from_numpy(self.rng.permutation(m))
            for rows in perm.chunk(self.hp.minibatches):
                mb = {k: v[rows] for k, v in batch.items()}
                for g in self.groups:
                    self.learner.group_step(g, mb, acc, inject)
        stats.update(acc.result())
        stats.update(self.learner.policy_stats(batch["obs"]))
        scalars = agent_stats(self.spec.agents, stats)
        scalars.update(self.learner.group_scalars())
        return scalars

    def finish_update(self) -> None:
        self.rollout.clear()

    # ------------------------------------------------------------------ evaluation and instrumentation
    def modules(self) -> dict[str, torch.nn.Module]:
        """``actor/<group>``, ``critic/<group>``: ``shared`` under parameter sharing, else the agents' names."""
        return dict(self._modules)

    def feature_probes(self, max_rows: int) -> list[FeatureProbe]:
        """Each group's actor and critic on the inputs they trained on in the last update: the rollout's states
        (evenly spaced; a shared network gets the same states for each of its agents: at most ``max_rows`` rows, at
        least one state)."""
        if self._last_obs is None:
            return []
        out = []
        for g in self.groups:
            obs = self._last_obs[even_rows(self._last_obs.shape[0], max(1, max_rows // len(g.agents)))]
            out.append(feature_probe(f"actor/{g.name}", g.actor, g.actor.mlp, self.actor_input(g, obs), g.actor.input_norm))
            out.append(feature_probe(f"critic/{g.name}", g.critic, g.critic.mlp, self.critic_input(g, obs),
                                     g.critic.input_norm))
        return out

    def group_of(self, i: int) -> PolicyGroup:
        return next(g for g in self.groups if i in g.agents)

    def _agent_raw(self, i: int, obs_i: torch.Tensor) -> tuple[PolicyGroup, torch.Tensor]:
        """Agent i's actor output at its raw observations [B, obs_dim_i] (normalized by the obs fix)."""
        sd, g = self.spec, self.group_of(i)
        padded = torch.zeros(obs_i.shape[0], sd.num_agents, sd.max_obs_dim, dtype=obs_i.dtype)
        padded[:, i, : sd.obs_dims[i]] = obs_i  # in-place copy into a fresh tensor keeps the graph to obs_i
        x = self.fixes.obs(padded)[:, i, : sd.obs_dims[i]]
        if g.shared:
            x = torch.cat([x, self.eye[i].expand(x.shape[0], -1)], dim=-1)
        return g, g.actor(x)

    def policy_fn(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def policy(o: torch.Tensor) -> torch.Tensor:
            g, raw = self._agent_raw(i, o)
            return g.actor.head(raw).greedy()

        return policy

    def preactivations(self, i: int, obs_i: torch.Tensor) -> torch.Tensor:
        return self._agent_raw(i, obs_i)[1]

    @torch.no_grad()
    def value_estimates(self, obs: np.ndarray) -> np.ndarray:
        return self._values(self.fixes.obs(torch.as_tensor(obs, dtype=torch.float32)))[0].numpy()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"groups": [g.state_dict() for g in self.groups], "rollout": self.rollout.state_dict(),
                "obs_norm": self.fixes.obs.state_dict(), "reward_transform": self.fixes.reward.state_dict(),
                "torch_gen": self.gen.get_state(), "np_rng": self.rng.bit_generator.state,
                "counters": {"env_steps": self.env_steps, "updates": self.updates}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for g, s in zip(self.groups, state["groups"], strict=True):
            g.load_state_dict(s)
        self.rollout.load_state_dict(state["rollout"])
        self.fixes.obs.load_state_dict(state["obs_norm"])
        self.fixes.reward.load_state_dict(state["reward_transform"])
        self.gen.set_state(state["torch_gen"])
        self.rng.bit_generator.state = state["np_rng"]
        self.env_steps, self.updates = int(state["counters"]["env_steps"]), int(state["counters"]["updates"])

    # ------------------------------------------------------------------ live changes (train.heal)
    def reconfigure(self, cfg: Any, changed: list[str]) -> None:
        """The PPO hyperparameters are read at every update (entropy coefficient, epochs, value loss and clipping,
        advantage normalization); optimizers follow ``actor_optim``/``critic_optim`` (:func:`retuned`); the log-std
        bounds are set on each policy head (its free output 0 still maps to ``log_std_init``)."""
        self.cfg, self.hp = cfg, cfg.ppo
        for g in self.groups:
            if any(k.startswith("actor_optim.") for k in changed):
                g.actor_opt = retuned(g.actor_opt, g.actor.parameters(), cfg.actor_optim)
            if any(k.startswith("critic_optim.") for k in changed):
                g.critic_opt = retuned(g.critic_opt, g.critic.parameters(), cfg.critic_optim)
            if "ppo.log_std_bounds" in changed:
                g.actor.head.set_bounds(None if self.hp.log_std_bounds is None else tuple(self.hp.log_std_bounds))

    def restart_episodes(self) -> None:  # the rollout in progress belongs to them
        self.rollout.clear()
        self._pending = None

    def snapshot(self) -> dict[str, Any]:
        """Networks, optimizers and value normalizers (what a rollback restores)."""
        return copy.deepcopy({"groups": [g.state_dict() for g in self.groups]})

    def restore(self, snap: dict[str, Any]) -> None:
        """Back to a snapshot; the rollout collected by the diverged policy is dropped."""
        for g, s in zip(self.groups, copy.deepcopy(snap["groups"]), strict=True):
            g.load_state_dict(s)
        self.restart_episodes()
