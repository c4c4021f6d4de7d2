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

from marl_stability.core.plasticity import FeatureProbe

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
        self.activation = activation
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


def feature_probe(name: str, network: nn.Module, mlp: MLP, inputs: torch.Tensor,
                  input_norm: nn.Module | None = None) -> FeatureProbe:
    """The plasticity probe of a network built on ``mlp``: the units are each hidden layer's activation output
    (before a residual addition), the features the last hidden layer's output; ``inputs`` are what the MLP (or
    ``input_norm`` before it) receives."""
    hidden = mlp.hidden
    features = hidden if input_norm is None else (lambda x: hidden(input_norm(x)))
    return FeatureProbe(name, network, [layer.act for layer in hidden], features, inputs)


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
        return head_forward(self.kind, pre, self.low, self.high)

    def explore(self, noisy: torch.Tensor) -> torch.Tensor:
        """Exploration noise added to this head's output: bounded heads clip it to the action bounds;
        linear_clip passes it on for the environment to clip (as naive code does)."""
        return head_explore(self.kind, noisy, self.low, self.high)


def head_forward(kind: str, pre: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """An output head as a function; ``low``/``high`` broadcast against ``pre`` (per-agent [N, 1, d] when batched)."""
    if kind == "linear_clip":
        # Naive code: the raw output is the action; only the environment clips it to the bounds.
        return pre
    if kind == "softsign":
        # Unscaled (-1, 1); for [0, 1] action spaces the env clips the negative half.
        return F.softsign(pre)
    if kind == "tanh":
        # Unscaled (-1, 1), as DDPG code written for [-1, 1] actions does; on [0, 1] the env clips the
        # negative half to 0, so half of the output range is one saturated action.
        return torch.tanh(pre)
    squashed = F.softsign(pre) if kind == "softsign_scaled" else torch.tanh(pre)
    return low + (squashed + 1.0) * 0.5 * (high - low)


def head_explore(kind: str, noisy: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    if kind in BOUNDED_HEADS:
        return torch.maximum(torch.minimum(noisy, high), low)
    return noisy


def head_kind(output: str) -> str:
    """The continuous output head of ``actor.output`` (``auto``: tanh scaled to the action bounds)."""
    return "tanh_scaled" if output == "auto" else output


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
        # Discrete actors output logits; the head is unused (kept None so the module tree says so).
        self.head = None if discrete else OutputHead(head_kind(output), low, high)

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



# --------------------------------------------------------------------------- all agents in one call
# Functional activations, identical to the modules in ACTIVATIONS (no per-call nn.Module overhead).
ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "elu": F.elu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
}


def stack_incompatibility(mlps: Sequence[MLP]) -> str | None:
    """Why these MLPs cannot be evaluated as one stack (None if they can): they must have the same layer
    shapes, activation, residual flags and LayerNorm/no norm (BatchNorm keeps per-module running statistics
    and train/eval behaviour, which the stacked call does not reproduce)."""
    ref = mlps[0]
    for m in mlps:
        if len(m.hidden) != len(ref.hidden):
            return "different numbers of hidden layers"
        for layer, ref_layer in zip(m.hidden, ref.hidden):
            if isinstance(layer.norm, nn.BatchNorm1d):
                return "BatchNorm layers"
            if not isinstance(layer.norm, (nn.LayerNorm, nn.Identity)) or type(layer.norm) is not type(ref_layer.norm):
                return "different norm layers"
            if (layer.activation, layer.residual) != (ref_layer.activation, ref_layer.residual):
                return "different activations or residual blocks"
        for p, q in zip(m.parameters(), ref.parameters(), strict=True):
            if p.shape != q.shape:
                return "different layer sizes"
    return None


class MLPStack:
    """N same-shaped MLPs evaluated together: each layer is one ``baddbmm`` over weights stacked per agent.

    The MLP modules keep owning their parameters; ``torch.stack`` is differentiable, so gradients of a
    stacked forward land in each module's own ``.grad`` (row i of the batch only ever touches agent i's
    weights). Inputs are ``[N, B, in]`` (one slice per agent) or ``[B, in]`` (shared by all agents);
    outputs ``[N, B, out]``. The parameter objects are captured once: ``load_state_dict`` copies in place.
    """

    def __init__(self, mlps: Sequence[MLP]) -> None:
        reason = stack_incompatibility(mlps)
        if reason is not None:
            raise ValueError(f"cannot stack these networks: {reason}")
        self.n = len(mlps)
        ref = mlps[0]
        self._layers: list[list[list[torch.Tensor]]] = []  # per layer: [weights, biases(, ln weights, ln biases)]
        self._specs: list[tuple[Callable[[torch.Tensor], torch.Tensor], bool, float | None, int]] = []
        for k, layer in enumerate(ref.hidden):
            group = [[m.hidden[k].linear.weight for m in mlps], [m.hidden[k].linear.bias for m in mlps]]
            eps = None
            if isinstance(layer.norm, nn.LayerNorm):
                if layer.norm.elementwise_affine:
                    group += [[m.hidden[k].norm.weight for m in mlps], [m.hidden[k].norm.bias for m in mlps]]
                eps = layer.norm.eps
            self._layers.append(group)
            self._specs.append((ACTIVATION_FNS[layer.activation], layer.residual, eps, layer.linear.out_features))
        self._layers.append([[m.out.weight for m in mlps], [m.out.bias for m in mlps]])

    def stacked(self) -> list[list[torch.Tensor]]:
        """Per layer: weights transposed to [N, in, out], biases [N, 1, out] (and LayerNorm affine [N, 1, out]).
        Differentiable unless called under ``torch.no_grad()``."""
        out = []
        for group in self._layers:
            w = torch.stack(group[0]).transpose(1, 2)
            out.append([w] + [torch.stack(ps).unsqueeze(1) for ps in group[1:]])
        return out

    @property
    def first_is_residual(self) -> bool:
        return self._specs[0][1]

    def __call__(self, x: torch.Tensor | None, params: list[list[torch.Tensor]] | None = None,
                 first_linear: torch.Tensor | None = None) -> torch.Tensor:
        """``first_linear``, if given, is the output of the first linear layer computed by the caller (x is then
        not needed; only allowed when the first layer is not residual)."""
        if params is None:
            params = self.stacked()
        if first_linear is not None and self.first_is_residual:
            raise ValueError("a residual first layer needs its input")
        h = x if x is None or x.dim() == 3 else x.expand(self.n, *x.shape)
        for k, (p, (act, residual, eps, width)) in enumerate(zip(params, self._specs)):
            y = first_linear if k == 0 and first_linear is not None else torch.baddbmm(p[1], h, p[0])
            if eps is not None:
                y = F.layer_norm(y, (width,), eps=eps)
                if len(p) == 4:
                    y = torch.addcmul(p[3], y, p[2])
            y = act(y)
            h = h + y if residual else y
        w, b = params[-1]
        return torch.baddbmm(b, h, w)


class ActorStack:
    """N same-shaped actors in one call: observations [N, B, obs_dim] -> (actions, pre-activations) [N, B, act_dim]."""

    def __init__(self, actors: Sequence[Actor]) -> None:
        ref = actors[0]
        if any((a.obs_dim, a.act_dim, a.discrete) != (ref.obs_dim, ref.act_dim, ref.discrete) for a in actors):
            raise ValueError("cannot stack actors with different observation/action sizes or action types")
        if any((a.head is None) != (ref.head is None) or (a.head is not None and a.head.kind != ref.head.kind)
               for a in actors):
            raise ValueError("cannot stack actors with different output heads")
        self.mlp = MLPStack([a.mlp for a in actors])
        self.discrete = ref.discrete
        self.kind = None if ref.head is None else ref.head.kind
        self._heads = [a.head for a in actors]

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-agent action bounds [N, 1, act_dim] (continuous actors)."""
        return (torch.stack([h.low for h in self._heads]).unsqueeze(1),
                torch.stack([h.high for h in self._heads]).unsqueeze(1))

    def __call__(self, obs: torch.Tensor, params: list[list[torch.Tensor]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.mlp(obs, params)
        if self.kind is None:
            return pre, pre
        low, high = self.bounds()
        return head_forward(self.kind, pre, low, high), pre

    def explore(self, noisy: torch.Tensor) -> torch.Tensor:
        low, high = self.bounds()
        return head_explore(self.kind, noisy, low, high)


class CriticStack:
    """N same-shaped critics in one call: critic inputs [N, B, in] or shared [B, in] -> Q values [N, B]."""

    def __init__(self, critics: Sequence[Critic]) -> None:
        self.mlp = MLPStack([c.mlp for c in critics])

    def __call__(self, inputs: torch.Tensor | None, params: list[list[torch.Tensor]] | None = None,
                 first_linear: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(inputs, params, first_linear).squeeze(-1)
