"""Action distributions of the on-policy actors (MAPPO / IPPO), as heads on the actor's raw output.

A head turns the actor's output layer (``raw``, the pre-activations) into a distribution over actions. Each
distribution keeps its sample in the space where the log-probability is exact ("stored sample"), and maps
it to what the environment applies:

==================  ==============================  =========================================================
head                stored sample                   env action / log-probability
==================  ==============================  =========================================================
``gaussian``        a ~ N(mean, std) (unclipped)    a clipped to the bounds (what the env would do); log N(a)
``tanh_gaussian``   u ~ N(mu, std), pre-squash      low + (tanh u + 1)/2 (high - low); log N(u) minus
                                                    sum log|da/du| (the change-of-variables correction)
``beta``            x ~ Beta(alpha, beta) in (0,1)  low + x (high - low); log Beta(x) - sum log(high - low)
``categorical``     index k ~ softmax(logits)       one-hot(k); log softmax(logits)[k]
==================  ==============================  =========================================================

Continuous scales are relative to the action range: with finite bounds the Gaussian's mean is
``center + half_range * raw`` (linear, not squashed: the env clips) and its std ``half_range * exp(log_std)``;
on unbounded actions ``mean = raw`` and ``std = exp(log_std)``. The log-std is a learned vector
(state-independent) or half of the actor's output (state-dependent); with ``bounds = (lo, hi)`` it is
``lo + (hi - lo) * sigmoid(raw)``, else ``log_std_init + raw``.

Entropy: analytic for the Gaussian, Beta and categorical; for the tanh-Gaussian (no closed form) a one-sample
reparameterized estimate ``-log p(u')`` with ``u'`` drawn from the caller's generator. ``entropy_per_dim``
reports the entropy of the action expressed in units of its range (comparable across bounds: 0 is a uniform
distribution over the range, a Gaussian with std 1% of the range is about -3.2; categorical: nats).

All sampling draws from an explicit ``torch.Generator`` (Beta through a seed drawn from it, since torch's
Gamma sampler takes none), so runs are reproducible and resume exactly.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

LOG2 = math.log(2.0)


def _normal_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(log_std)^2)."""
    return -0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)


def log_one_minus_tanh_sq(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2), written stably: 2 (log 2 - u - softplus(-2u)) (no 1 - 1 = 0 for large |u|)."""
    return 2.0 * (LOG2 - u - F.softplus(-2.0 * u))


class Distribution:
    """One batch of action distributions [B, d]. Subclasses define the maths; all return tensors."""

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probability [B] of stored samples [B, d] (summed over action dimensions)."""
        raise NotImplementedError

    def entropy(self, gen: torch.Generator) -> torch.Tensor:
        """Entropy [B] of the action (summed over dimensions; tanh-Gaussian: a one-sample estimate)."""
        raise NotImplementedError

    def env_action(self, x: torch.Tensor) -> torch.Tensor:
        """What the env applies for stored samples x."""
        raise NotImplementedError

    def greedy(self) -> torch.Tensor:
        """The deterministic action (differentiable in the parameters)."""
        raise NotImplementedError


class Gaussian(Distribution):
    """Diagonal Gaussian; the env (here: the actor, before the env) clips samples to the bounds."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> None:
        self.mean, self.log_std, self.low, self.high = mean, log_std.expand_as(mean), low, high

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=gen)
        return self.mean + self.log_std.exp() * noise

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return _normal_log_prob(x, self.mean, self.log_std).sum(-1)

    def entropy(self, gen: torch.Generator) -> torch.Tensor:
        return (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum(-1)

    def env_action(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, self.high), self.low)

    def greedy(self) -> torch.Tensor:
        return self.env_action(self.mean)


class TanhGaussian(Distribution):
    """u ~ N(mu, std); action = low + (tanh(u) + 1) / 2 * (high - low)."""

    def __init__(self, mu: torch.Tensor, log_std: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> None:
        self.mu, self.log_std, self.low, self.high = mu, log_std.expand_as(mu), low, high
        self.log_half_range = torch.log((high - low) / 2.0)

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        return self.mu + self.log_std.exp() * torch.randn(self.mu.shape, generator=gen)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        # da/du = (high - low)/2 * (1 - tanh(u)^2) per dimension
        log_det = log_one_minus_tanh_sq(x) + self.log_half_range
        return (_normal_log_prob(x, self.mu, self.log_std) - log_det).sum(-1)

    def entropy(self, gen: torch.Generator) -> torch.Tensor:
        u = self.mu + self.log_std.exp() * torch.randn(self.mu.shape, generator=gen)  # reparameterized
        return -self.log_prob(u)

    def env_action(self, x: torch.Tensor) -> torch.Tensor:
        return self.low + (torch.tanh(x) + 1.0) * 0.5 * (self.high - self.low)

    def greedy(self) -> torch.Tensor:
        return self.env_action(self.mu)


class Beta(Distribution):
    """x ~ Beta(alpha, beta) per dimension; action = low + x (high - low) (Chou et al. 2017)."""

    EPS = 1e-6  # samples are kept inside (0, 1): log Beta(0) is -inf for alpha > 1

    def __init__(self, alpha: torch.Tensor, beta: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> None:
        self.alpha, self.beta, self.low, self.high = alpha, beta, low, high
        self.dist = torch.distributions.Beta(alpha, beta, validate_args=False)
        self.log_range = torch.log(high - low)

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        with torch.random.fork_rng(devices=[]):  # the global RNG is left exactly as it was
            torch.manual_seed(seed)
            x = self.dist.sample()
        return x.clamp(self.EPS, 1.0 - self.EPS)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dist.log_prob(x.clamp(self.EPS, 1.0 - self.EPS)) - self.log_range).sum(-1)

    def entropy(self, gen: torch.Generator) -> torch.Tensor:
        return (self.dist.entropy() + self.log_range).sum(-1)

    def env_action(self, x: torch.Tensor) -> torch.Tensor:
        return self.low + x * (self.high - self.low)

    def greedy(self) -> torch.Tensor:
        return self.env_action(self.alpha / (self.alpha + self.beta))


class Categorical(Distribution):
    """Discrete actions; stored samples are indices as a float column [B, 1]; the env gets one-hot vectors."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.log_p = torch.log_softmax(logits, dim=-1)

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.log_p.exp(), 1, generator=gen).to(self.logits.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_p.gather(-1, x.long()).squeeze(-1)

    def entropy(self, gen: torch.Generator) -> torch.Tensor:
        return -(self.log_p.exp() * self.log_p).sum(-1)

    def env_action(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x.long().squeeze(-1), self.logits.shape[-1]).to(self.logits.dtype)

    def greedy(self) -> torch.Tensor:
        """Probabilities (the policy_fn contract for discrete agents); ``act`` takes their argmax."""
        return self.log_p.exp()


class ActionHead(nn.Module):
    """Maps the actor's raw output to a ``Distribution``; owns the state-independent log-std parameter.

    ``kind``: ``gaussian`` | ``tanh_gaussian`` | ``beta`` | ``categorical``. ``low``/``high``: the action
    bounds [d] (may be infinite for ``gaussian``). ``n_outputs``: the width the actor's output layer needs.
    """

    def __init__(self, kind: str, act_dim: int, low: torch.Tensor, high: torch.Tensor, state_dependent: bool = False,
                 log_std_init: float = 0.0, bounds: Optional[tuple[float, float]] = None) -> None:
        super().__init__()
        if kind not in ("gaussian", "tanh_gaussian", "beta", "categorical"):
            raise ValueError(f"unknown action distribution {kind!r}")
        finite = bool(torch.isfinite(high - low).all())
        if kind in ("tanh_gaussian", "beta") and not finite:
            raise ValueError(f"{kind} needs finite action bounds")
        self.kind, self.act_dim = kind, act_dim
        self.register_buffer("low", low.clone().float())
        self.register_buffer("high", high.clone().float())
        self.bounded = finite and kind == "gaussian"
        self.uses_log_std = kind in ("gaussian", "tanh_gaussian")
        self.state_dependent = state_dependent and self.uses_log_std
        self.log_std_init = float(log_std_init)
        self.set_bounds(bounds)
        two = kind == "beta" or self.state_dependent
        self.n_outputs = 2 * act_dim if two else act_dim
        self.log_std_param = (nn.Parameter(torch.zeros(act_dim)) if self.uses_log_std and not self.state_dependent
                              else None)

    def set_bounds(self, bounds: Optional[tuple[float, float]]) -> None:
        """Bound the log-std to ``bounds`` (None: unbounded); the head's free output 0 maps to ``log_std_init``
        either way (also on a live run: ``train.heal`` applying the log-std bound)."""
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        if self.bounds is not None:  # sigmoid(raw + offset) starts at log_std_init
            lo, hi = self.bounds
            p = (self.log_std_init - lo) / (hi - lo)
            self.offset = math.log(p / (1.0 - p))
        else:
            self.offset = self.log_std_init

    def log_std(self, raw: torch.Tensor) -> Optional[torch.Tensor]:
        """The log-std [B, d] (or [d]) in the head's units, None for Beta and categorical."""
        if not self.uses_log_std:
            return None
        free = raw[..., self.act_dim:] if self.state_dependent else self.log_std_param
        if self.bounds is None:
            return free + self.offset
        lo, hi = self.bounds
        return lo + (hi - lo) * torch.sigmoid(free + self.offset)

    def forward(self, raw: torch.Tensor) -> Distribution:
        d = self.act_dim
        if self.kind == "categorical":
            return Categorical(raw)
        if self.kind == "beta":
            return Beta(1.0 + F.softplus(raw[..., :d]), 1.0 + F.softplus(raw[..., d:]), self.low, self.high)
        log_std = self.log_std(raw)
        mean = raw[..., :d]
        if self.kind == "tanh_gaussian":
            return TanhGaussian(mean, log_std, self.low, self.high)
        if self.bounded:
            half = (self.high - self.low) / 2.0
            return Gaussian((self.low + self.high) / 2.0 + half * mean, log_std + torch.log(half), self.low, self.high)
        return Gaussian(mean, log_std, self.low, self.high)

    def range_log_volume(self) -> float:
        """sum log(high - low) over dimensions (0 for categorical or unbounded actions)."""
        if self.kind == "categorical" or not bool(torch.isfinite(self.high - self.low).all()):
            return 0.0
        return float(torch.log(self.high - self.low).sum())

    def entropy_per_dim(self, entropy: torch.Tensor) -> torch.Tensor:
        """Entropy of the action in units of its range, per action dimension (categorical: nats)."""
        return (entropy - self.range_log_volume()) / (1 if self.kind == "categorical" else self.act_dim)
