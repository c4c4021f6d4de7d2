"""Stability fixes that are not network pieces, each an object built once from config.

Each acts at its own point and the training loop never tests a flag:
- gradient clipping: called after ``backward()``, before ``step()`` (returns pre/post norms for logging);
- observation normalization: updated on collected observations, applied to every network input;
- reward transform: updated on collected rewards, applied to sampled rewards;
- pre-activation penalty: added to the actor loss.
Network pieces (tanh-scaled outputs, small last-layer init, norm layers, residuals, activation, init,
optimizer, learning rate, Huber loss) are built from the actor/critic/optim config in ``agents``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import numpy as np
import torch

from marl_stability.config import (
    ClipConfig,
    FixesConfig,
    ObsNormConfig,
    RewardFixConfig,
)


# --------------------------------------------------------------------------- gradient clipping
@dataclass
class GradNorms:
    """One measurement of a network's gradients after backward: it serves the clipper, the logs and the
    detectors (nothing else measures them again)."""

    params: list[torch.nn.Parameter]  # every parameter of the network, in order
    with_grad: list[int]  # indices of the parameters that have a gradient
    per_tensor: list[float]  # L2 norm of each of those gradients (pre-clip)
    total: float  # global L2 norm of all of them (pre-clip)
    total_tensor: torch.Tensor  # the same, as the 0-dim tensor the clipping kernels take


def measure_grads(params: Iterable[torch.nn.Parameter]) -> GradNorms:
    """Per-tensor and global L2 gradient norms, one fused kernel and one host transfer.

    The global norm is computed exactly as ``torch.nn.utils.clip_grad_norm_`` computes it, so clipping with
    it (``clip_grads_with_norm_``) is bit-identical to calling ``clip_grad_norm_``.
    """
    params = list(params)  # a generator (model.parameters()) would be used up
    idx = [i for i, p in enumerate(params) if p.grad is not None]
    if not idx:
        return GradNorms(params, [], [], 0.0, torch.zeros(()))
    norms = torch.stack(list(torch._foreach_norm([params[i].grad for i in idx])))
    total = torch.linalg.vector_norm(norms)
    values = torch.cat([norms, total.reshape(1)]).tolist()
    return GradNorms(params, idx, values[:-1], values[-1], total)


@dataclass
class ClipStats:
    pre_norm: float  # global L2 norm of all gradients before clipping
    post_norm: float  # global L2 norm after clipping
    clipped: bool  # whether clipping changed any gradient


class GradClipper:
    """No clipping; measures the norm so every mode reports the same statistics."""

    mode = "none"

    def __init__(self, max_value: float = float("inf")) -> None:
        self.max_value = max_value

    def __call__(self, params: Iterable[torch.nn.Parameter]) -> ClipStats:
        """Measure, then clip (for callers without a measurement of their own)."""
        return self.clip(measure_grads(params))

    def clip(self, norms: GradNorms) -> ClipStats:
        """Clip in place using the measurement taken after backward."""
        clipped = self._clip(norms)
        post = measure_grads(norms.params).total if clipped else norms.total
        return ClipStats(norms.total, post, clipped)

    def _clip(self, norms: GradNorms) -> bool:
        """Clip in place; return whether any gradient changed."""
        return False


class GlobalNormClip(GradClipper):
    """Pascanu et al. 2013 / ``clip_grad_norm_``: rescale all gradients together if their L2 norm > max."""

    mode = "global_norm"

    def _clip(self, norms: GradNorms) -> bool:
        if norms.with_grad:
            torch.nn.utils.clip_grads_with_norm_([norms.params[i] for i in norms.with_grad], self.max_value,
                                                 norms.total_tensor)
        return norms.total > self.max_value


class PerTensorClip(GradClipper):
    """openai/maddpg's ``clip_by_norm`` on each variable separately."""

    mode = "per_tensor"

    def _clip(self, norms: GradNorms) -> bool:
        clipped = False
        for i, norm in zip(norms.with_grad, norms.per_tensor):
            torch.nn.utils.clip_grads_with_norm_([norms.params[i]], self.max_value, torch.tensor(norm))
            clipped |= norm > self.max_value
        return clipped


class ValueClip(GradClipper):
    """Clip each gradient component to [-max, max] (changes the direction, unlike norm clipping)."""

    mode = "value"

    def _clip(self, norms: GradNorms) -> bool:
        grads = [norms.params[i].grad for i in norms.with_grad]
        clipped = any(bool((g.abs() > self.max_value).any()) for g in grads)
        torch.nn.utils.clip_grad_value_(norms.params, self.max_value)
        return clipped


_CLIPPERS: dict[str, type[GradClipper]] = {c.mode: c for c in (GradClipper, GlobalNormClip, PerTensorClip, ValueClip)}


def make_clipper(cfg: ClipConfig) -> GradClipper:
    return _CLIPPERS[cfg.mode](cfg.max if cfg.mode != "none" else float("inf"))


# --------------------------------------------------------------------------- running statistics
class RunningMeanStd:
    """Parallel (Chan et al.) running mean/variance over the leading axis, float64 for stability."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, *self.mean.shape)
        if x.shape[0] == 0:
            return
        b_mean, b_var, b_count = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": torch.from_numpy(self.mean.copy()), "var": torch.from_numpy(self.var.copy()), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = np.asarray(state["mean"], np.float64).copy()
        self.var = np.asarray(state["var"], np.float64).copy()
        self.count = float(state["count"])


# --------------------------------------------------------------------------- observation normalization
class ObsTransform(Protocol):
    def update(self, obs: np.ndarray) -> None: ...
    def __call__(self, obs: torch.Tensor) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class IdentityObs:
    """Raw observations (no input normalization)."""

    def update(self, obs: np.ndarray) -> None:
        return None

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class ObsNormalizer:
    """Per-agent running mean/std: ``(x - mean) / (std + eps)``, clipped to +-clip.

    Statistics are updated only on collected training observations (never during evaluation) and are
    saved in checkpoints. Works on the padded layout ``[..., num_agents, max_obs_dim]``; padding columns
    have zero variance and stay zero.
    """

    def __init__(self, num_agents: int, obs_dim: int, cfg: ObsNormConfig) -> None:
        self.rms = RunningMeanStd((num_agents, obs_dim))
        self.eps, self.clip = cfg.eps, cfg.clip
        self._refresh()

    def _refresh(self) -> None:
        self._mean = torch.as_tensor(self.rms.mean, dtype=torch.float32)
        self._std = torch.as_tensor(np.sqrt(self.rms.var), dtype=torch.float32)

    def update(self, obs: np.ndarray) -> None:
        self.rms.update(obs)
        self._refresh()

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self._mean) / (self._std + self.eps)).clamp(-self.clip, self.clip)

    def state_dict(self) -> dict[str, Any]:
        return self.rms.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rms.load_state_dict(state)
        self._refresh()


def make_obs_transform(cfg: ObsNormConfig, num_agents: int, obs_dim: int) -> ObsTransform:
    return ObsNormalizer(num_agents, obs_dim, cfg) if cfg.enabled else IdentityObs()


# --------------------------------------------------------------------------- reward transforms
class RewardTransform:
    """Identity: the learner sees the raw (env-wrapped) reward."""

    def update(self, reward: np.ndarray, done: np.ndarray) -> None:
        return None

    def __call__(self, reward: torch.Tensor) -> torch.Tensor:
        return reward

    def scale(self) -> float:
        """The current multiplicative factor applied to rewards (logged as the running return scale)."""
        return 1.0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class RewardScale(RewardTransform):
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, reward: torch.Tensor) -> torch.Tensor:
        return reward * self.factor

    def scale(self) -> float:
        return self.factor


class ReturnNormalizer(RewardTransform):
    """Divide rewards by the running std of the discounted return (per agent), then clip.

    The discounted return is accumulated per env copy and agent from collected rewards and reset at
    episode ends — the usual PPO/EPyMARL-style reward scaling, which keeps the reward's sign and shift.
    """

    def __init__(self, num_envs: int, num_agents: int, gamma: float, clip: float, eps: float = 1e-8) -> None:
        self.rms = RunningMeanStd((num_agents,))
        self.returns = np.zeros((num_envs, num_agents), np.float64)
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self._std = torch.ones(num_agents)

    def update(self, reward: np.ndarray, done: np.ndarray) -> None:
        self.returns = self.returns * self.gamma + reward
        self.rms.update(self.returns)
        self.returns[np.asarray(done, bool)] = 0.0
        self._std = torch.as_tensor(np.sqrt(self.rms.var), dtype=torch.float32)

    def __call__(self, reward: torch.Tensor) -> torch.Tensor:
        return (reward / (self._std + self.eps)).clamp(-self.clip, self.clip)

    def scale(self) -> float:
        return float(1.0 / (self._std.mean() + self.eps))

    def state_dict(self) -> dict[str, Any]:
        return {"rms": self.rms.state_dict(), "returns": torch.from_numpy(self.returns.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rms.load_state_dict(state["rms"])
        self.returns = np.asarray(state["returns"], np.float64).copy()
        self._std = torch.as_tensor(np.sqrt(self.rms.var), dtype=torch.float32)


def make_reward_transform(cfg: RewardFixConfig, num_envs: int, num_agents: int, gamma: float) -> RewardTransform:
    if cfg.mode == "scale":
        return RewardScale(cfg.scale)
    if cfg.mode == "normalize":
        return ReturnNormalizer(num_envs, num_agents, gamma, cfg.clip)
    return RewardTransform()


# --------------------------------------------------------------------------- actor pre-activation penalty
class PreactivationPenalty:
    """openai/maddpg: actor loss + c * mean(pre-activation^2), keeping outputs out of saturation."""

    def __init__(self, coef: float) -> None:
        self.coef = coef

    def __call__(self, preact: torch.Tensor) -> torch.Tensor:
        if self.coef == 0.0:
            return torch.zeros((), dtype=preact.dtype)
        return self.coef * preact.pow(2).mean()

    def per_agent(self, preact: torch.Tensor) -> torch.Tensor:
        """The penalty of each agent's slice of stacked pre-activations [N, ...] -> [N]."""
        if self.coef == 0.0:
            return torch.zeros(preact.shape[0], dtype=preact.dtype)
        return self.coef * preact.pow(2).flatten(1).mean(dim=1)


# --------------------------------------------------------------------------- statistics kept for a later switch
class Shadowed:
    """An observation or reward transform that acts as ``active`` (the identity of a fix that is off) while a
    ``shadow`` normalizer sees the same data. ``train.heal`` builds these for the normalizers a run does not use,
    so a normalizer it switches on mid-run starts from the statistics of every step so far -- as if it had been
    on from the start -- instead of from its first few samples. It changes nothing the run computes."""

    def __init__(self, active: Any, shadow: Any) -> None:
        self.active, self.shadow = active, shadow

    def update(self, *data: np.ndarray) -> None:
        self.active.update(*data)
        self.shadow.update(*data)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.active(x)

    def scale(self) -> float:
        return self.active.scale()

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active.state_dict(), "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active.load_state_dict(state["active"])
        self.shadow.load_state_dict(state["shadow"])


def switched_on(new: Any, old: Any) -> Any:
    """``new`` (a normalizer a heal switches on), starting from ``old``'s shadow statistics when it kept some."""
    if isinstance(old, Shadowed) and type(old.shadow) is type(new):
        new.load_state_dict(old.shadow.state_dict())
    return new


# --------------------------------------------------------------------------- all of them
@dataclass
class Fixes:
    actor_clip: GradClipper
    critic_clip: GradClipper
    obs: ObsTransform
    reward: RewardTransform
    preact_penalty: PreactivationPenalty


def build_fixes(cfg: FixesConfig, num_envs: int, num_agents: int, obs_dim: int, gamma: float,
                shadow: bool = False) -> Fixes:
    """The run's fix objects. ``shadow`` (``train.heal``): the observation and reward normalizers that are off keep
    their statistics anyway (:class:`Shadowed`), for a heal that switches them on."""
    obs, reward = make_obs_transform(cfg.obs_norm, num_agents, obs_dim), make_reward_transform(cfg.reward, num_envs, num_agents, gamma)
    if shadow and not cfg.obs_norm.enabled:
        obs = Shadowed(obs, ObsNormalizer(num_agents, obs_dim, cfg.obs_norm))
    if shadow and cfg.reward.mode != "normalize":
        reward = Shadowed(reward, ReturnNormalizer(num_envs, num_agents, gamma, cfg.reward.clip))
    return Fixes(actor_clip=make_clipper(cfg.grad_clip.actor), critic_clip=make_clipper(cfg.grad_clip.critic),
                 obs=obs, reward=reward, preact_penalty=PreactivationPenalty(cfg.actor_preact_l2))
