"""MLP actors and critics whose pieces are switchable from config.

Pieces: hidden sizes, activation, LayerNorm/BatchNorm after hidden linears, residual blocks, weight init
scheme, a separate last-layer init scale and (actors) the output head. Actors return both the action and
the output layer's pre-activation, because saturation and openai/maddpg's penalty are defined on it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}

# Gains for init schemes that take one, per activation (torch.nn.init.calculate_gain names).
_GAIN_NAME = {"relu": "relu", "leaky_relu": "leaky_relu", "elu": "relu", "gelu": "relu", "tanh": "tanh"}

BOUNDED_HEADS = ("softsign", "softsign_scaled", "tanh", "tanh_scaled")
CONTINUOUS_HEADS = ("linear_clip",) + BOUNDED_HEADS


def _norm_layer(kind: str, width: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(width)
    if kind == "batchnorm":
        return nn.BatchNorm1d(width)
    return nn.Identity()


class HiddenLayer(nn.Module):
    """linear -> norm -> activation, optionally residual (x + act(norm(W x))) when in == out width."""

    def __init__(self, in_dim: int, out_dim: int, activation: str, norm: str, residual: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = _norm_layer(norm, out_dim)
        self.act = ACTIVATIONS[activation]()
        self.residual = residual and in_dim == out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm(self.linear(x)))
        return x + y if self.residual else y


class MLP(nn.Module):
    """Hidden layers followed by a linear output layer (``self.out``)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_sizes: Sequence[int],
        activation: str = "relu",
        norm: str = "none",
        residual: bool = False,
        init: str = "default",
        last_layer_init: float | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden_sizes:
            layers.append(HiddenLayer(width, h, activation, norm, residual))
            width = h
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, out_dim)
        init_weights(self, init, activation, last_layer_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))


def init_weights(mlp: MLP, scheme: str, activation: str, last_layer_init: float | None) -> None:
    """Apply an init scheme to the hidden linears and, if given, U(-s, s) to the output layer."""
    if scheme != "default":
        gain = nn.init.calculate_gain(_GAIN_NAME[activation], 0.01 if activation == "leaky_relu" else None)
        for layer in mlp.hidden:
            w = layer.linear.weight
            if scheme == "kaiming":
                nn.init.kaiming_uniform_(w, a=0.01 if activation == "leaky_relu" else 0.0,
                                         nonlinearity=_GAIN_NAME[activation])
            elif scheme == "xavier":
                nn.init.xavier_uniform_(w, gain=gain)
            elif scheme == "orthogonal":
                nn.init.orthogonal_(w, gain=gain)
            else:  # pragma: no cover - config validation guarantees the scheme
                raise ValueError(scheme)
            nn.init.zeros_(layer.linear.bias)
        if scheme == "orthogonal" and last_layer_init is None:
            nn.init.orthogonal_(mlp.out.weight, gain=1.0)
            nn.init.zeros_(mlp.out.bias)
    if last_layer_init is not None:
        nn.init.uniform_(mlp.out.weight, -last_layer_init, last_layer_init)
        nn.init.uniform_(mlp.out.bias, -last_layer_init, last_layer_init)


class OutputHead(nn.Module):
    """Maps the output pre-activation to an action inside (or, for linear_clip, around) the bounds."""

    def __init__(self, kind: str, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        if kind not in CONTINUOUS_HEADS:
            raise ValueError(f"unknown continuous output head {kind!r}")
        self.kind = kind
        self.register_buffer("low", low.clone().float())
        self.register_buffer("high", high.clone().float())

    @property
    def bounded(self) -> bool:
        return self.kind in BOUNDED_HEADS

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear_clip":
            # Naive code: the raw output is the action; only the environment clips it to the bounds.
            return pre
        if self.kind == "softsign":
            # Unscaled (-1, 1); for [0, 1] action spaces the env clips the negative half.
            return F.softsign(pre)
        if self.kind == "tanh":
            # Unscaled (-1, 1), as DDPG code written for [-1, 1] actions does; on [0, 1] the env clips
            # the negative half to 0, so half of the output range is one saturated action.
            return torch.tanh(pre)
        squashed = F.softsign(pre) if self.kind == "softsign_scaled" else torch.tanh(pre)
        return self.low + (squashed + 1.0) * 0.5 * (self.high - self.low)

    def explore(self, noisy: torch.Tensor) -> torch.Tensor:
        """Exploration noise added to this head's output: bounded heads clip it to the action bounds;
        linear_clip passes it on for the environment to clip (as naive code does)."""
        if self.bounded:
            return torch.maximum(torch.minimum(noisy, self.high), self.low)
        return noisy


class Actor(nn.Module):
    """Deterministic decentralized actor: obs -> (action or logits, pre-activation)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        discrete: bool,
        hidden_sizes: Sequence[int],
        activation: str,
        norm: str,
        residual: bool,
        init: str,
        last_layer_init: float | None,
        output: str,
        low: torch.Tensor,
        high: torch.Tensor,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.discrete = obs_dim, act_dim, discrete
        self.mlp = MLP(obs_dim, act_dim, hidden_sizes, activation, norm, residual, init, last_layer_init)
        head_kind = "tanh_scaled" if output == "auto" else output
        # Discrete actors output logits; the head is unused (kept None so the module tree says so).
        self.head = None if discrete else OutputHead(head_kind, low, high)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.mlp(obs)
        if self.head is None:
            return pre, pre
        return self.head(pre), pre


class Critic(nn.Module):
    """Centralized critic Q_i(all observations, all actions) -> scalar."""

    def __init__(
        self,
        in_dim: int,
        hidden_sizes: Sequence[int],
        activation: str,
        norm: str,
        residual: bool,
        init: str,
        last_layer_init: float | None,
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, 1, hidden_sizes, activation, norm, residual, init, last_layer_init)

    def forward(self, joint_obs: torch.Tensor, joint_act: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([joint_obs, joint_act], dim=-1)).squeeze(-1)


def gumbel_softmax_hard(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Straight-through Gumbel-softmax: a one-hot sample forward, the soft sample's gradient backward.

    Written with an explicit generator (torch's F.gumbel_softmax uses the global RNG), so runs are exactly
    reproducible and resumable.
    """
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
    soft = torch.softmax((logits + gumbel) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)

