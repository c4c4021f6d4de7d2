"""The networks of MAPPO/IPPO: actor and critic per *policy group*, and the value normalizer.

A group is the set of agents one actor and one critic serve: all agents together under parameter sharing
(their inputs get an agent-id one-hot appended, so the shared networks can still tell them apart), or one
agent each. The layers are ``marl_stability.agents.networks.MLP`` (the same switchable pieces as MADDPG's: activation,
LayerNorm/BatchNorm, residual, init, small last-layer init), with an optional LayerNorm on the inputs (the
reference's feature normalization) and, for the actor, an orthogonal output layer of small gain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from marl_stability.agents.distributions import ActionHead, Distribution
from marl_stability.agents.networks import MLP
from torch import nn

from marl_stability.fixes.objects import RunningMeanStd


class PolicyNet(nn.Module):
    """input LayerNorm (optional) -> MLP -> the distribution head's raw parameters."""

    def __init__(self, in_dim: int, head: ActionHead, net_cfg: Any, input_layernorm: bool, output_gain: float) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(in_dim) if input_layernorm else nn.Identity()
        self.mlp = MLP(in_dim, head.n_outputs, net_cfg.hidden_sizes, net_cfg.activation, net_cfg.norm,
                       net_cfg.residual, net_cfg.init, net_cfg.last_layer_init)
        if net_cfg.init == "orthogonal" and net_cfg.last_layer_init is None:
            nn.init.orthogonal_(self.mlp.out.weight, gain=output_gain)
            nn.init.zeros_(self.mlp.out.bias)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The output layer's pre-activations (the distribution's raw parameters)."""
        return self.mlp(self.input_norm(x))

    def dist(self, x: torch.Tensor) -> tuple[Distribution, torch.Tensor]:
        raw = self(x)
        return self.head(raw), raw


class ValueNet(nn.Module):
    """input LayerNorm (optional) -> MLP -> one value per input row."""

    def __init__(self, in_dim: int, net_cfg: Any, input_layernorm: bool) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(in_dim) if input_layernorm else nn.Identity()
        self.mlp = MLP(in_dim, 1, net_cfg.hidden_sizes, net_cfg.activation, net_cfg.norm, net_cfg.residual,
                       net_cfg.init, net_cfg.last_layer_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.input_norm(x)).squeeze(-1)


class ValueNormalizer:
    """Running mean/std of the returns (float64); the critic predicts ``(return - mean) / std``."""

    EPS = 1e-8

    def __init__(self) -> None:
        self.rms = RunningMeanStd((1,))

    def update(self, returns: torch.Tensor) -> None:
        self.rms.update(returns.detach().double().reshape(-1, 1).numpy())

    @property
    def mean(self) -> float:
        return float(self.rms.mean[0])

    @property
    def std(self) -> float:
        return float(np.sqrt(self.rms.var[0] + self.EPS))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def state_dict(self) -> dict[str, Any]:
        return self.rms.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rms.load_state_dict(state)


@dataclass
class PolicyGroup:
    """One actor and one critic (with their optimizers and value normalizer) and the agents they serve."""

    name: str  # "shared" or the agent's name (module names: actor/<name>, critic/<name>)
    agents: list[int]  # agent indices in the layout
    obs_dim: int
    act_dim: int
    discrete: bool
    shared: bool  # inputs carry the agent-id one-hot
    actor: PolicyNet
    critic: ValueNet
    actor_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer
    value_norm: Optional[ValueNormalizer]
    actor_params: list[nn.Parameter] = field(default_factory=list)
    critic_params: list[nn.Parameter] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.actor_params = list(self.actor.parameters())
        self.critic_params = list(self.critic.parameters())
        self.index = torch.tensor(self.agents)

    @property
    def stored_dim(self) -> int:
        """Width of a stored action sample (categorical: the index)."""
        return 1 if self.discrete else self.act_dim

    def to_values(self, out: torch.Tensor) -> torch.Tensor:
        """The critic's output in learner reward units."""
        return self.value_norm.denormalize(out) if self.value_norm is not None else out

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "value_norm": self.value_norm.state_dict() if self.value_norm is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        if self.value_norm is not None:
            self.value_norm.load_state_dict(state["value_norm"])
