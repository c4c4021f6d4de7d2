"""What the BenchMARL callback measures on BenchMARL's tensordicts: action statistics of a batch or an evaluation
episode, team returns, the entropy in this project's unit, network kinds, and the hidden features of BenchMARL's MLPs
for the plasticity metrics. Functions of tensordicts and torch modules (BenchMARL itself is imported by the callback)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from marl_stability.core import plasticity
from marl_stability.core.summary import AgentActionStats
from marl_stability.hooks import monitor
from marl_stability.hooks.detectors import standardized_sensitivity

Bounds = Optional[tuple[torch.Tensor, torch.Tensor]]

_ACTOR_LOSSES = ("loss_objective", "loss_actor")
_CRITIC_LOSSES = ("loss_critic", "loss_qvalue", "loss_value", "loss")


def kind_of(loss_name: str) -> str:
    """The network kind (``actor``, ``critic``, or the loss's own name) an optimizer of BenchMARL steps, from the loss
    it minimizes."""
    if loss_name in _ACTOR_LOSSES:
        return "actor"
    if loss_name in _CRITIC_LOSSES:
        return "critic"
    return loss_name.removeprefix("loss_")


def _as_env_time(t: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """[E, T, ...]: a collector batch is [E, T] already; one episode [T] becomes [1, T]."""
    return t.unsqueeze(0) if batch_dims == 1 else t.reshape(-1, *t.shape[batch_dims - 1:]) if batch_dims > 2 else t


def _done(td: Any, group: str) -> torch.Tensor:
    """[E, T] bool: the episode ended at this step (any agent done ends it for the shared env)."""
    key = ("next", "done") if ("next", "done") in td.keys(True) else ("next", group, "done")
    d = td.get(key)
    dims = td.batch_dims
    d = _as_env_time(d, dims)
    return d.reshape(d.shape[0], d.shape[1], -1).any(-1)


def action_stats(td: Any, group: str, agents: Sequence[str], bounds: Bounds, det: Any,
                 index: Optional[int] = None) -> tuple[dict[str, float], int]:
    """``policy/`` and ``reward/`` scalars of each agent of ``group`` over a batch ``td`` ([E, T] or [T]), and the count
    of non-finite action components. ``index``: the agents' position in the group when ``agents`` is one of them."""
    dims = td.batch_dims
    actions = _as_env_time(td.get((group, "action")), dims).detach()
    if actions.ndim == 3:  # categorical actions as indices [E, T, n]
        actions = actions.unsqueeze(-1)
    actions = actions.to(torch.float64)
    counted = (~_done(td, group))[:, :-1].T.cpu().numpy()  # pair (t, t+1) lies in one episode
    keys = td.keys(True)
    loc = _as_env_time(td.get((group, "loc")), dims) if (group, "loc") in keys else None
    scale = _as_env_time(td.get((group, "scale")), dims) if (group, "scale") in keys else None
    logits = _as_env_time(td.get((group, "logits")), dims) if (group, "logits") in keys and loc is None else None
    reward = _as_env_time(td.get(("next", group, "reward")), dims) if ("next", group, "reward") in keys else None
    out: dict[str, float] = {}
    for k, agent in enumerate(agents):
        j = k if index is None else index
        a = actions[:, :, j]  # [E, T, d]
        flat = a.reshape(-1, a.shape[-1])
        seq = a.transpose(0, 1).cpu().numpy()
        out[f"policy/repeat_rate/{agent}"] = monitor.sequence_repeat_rate(seq, counted, det.same_action_atol)
        if logits is not None:
            out[f"policy/saturation/{agent}"] = monitor.discrete_saturation(torch.softmax(logits[:, :, j].double(), -1))
        elif bounds is not None:
            out[f"policy/saturation/{agent}"] = monitor.saturation_fraction(
                flat, bounds[0][j].cpu().numpy(), bounds[1][j].cpu().numpy(), det.saturation_margin)
        rows = plasticity.even_rows(flat.shape[0], det.same_action_max_rows)
        out[f"policy/batch_same_action/{agent}"] = monitor.batch_same_action_rate(flat[rows], det.same_action_atol,
                                                                                  det.same_action_max_rows)
        if loc is not None:
            out[f"policy/preact_max_abs_batch/{agent}"] = float(loc[:, :, j].abs().max())
        if scale is not None:
            out[f"policy/log_std_max/{agent}"] = float(scale[:, :, j].log().max())
        if reward is not None:
            out[f"reward/raw_batch_mean/{agent}"] = float(reward[:, :, j].mean())
    bad = int((~torch.isfinite(actions)).sum())
    return out, bad


def eval_action_stats(rollouts: Sequence[Any], group: str, i: int, agent: str, bounds: Bounds, det: Any,
                      policy: Any, continuous: bool = True) -> AgentActionStats:
    """Agent ``i`` of ``group`` over BenchMARL's evaluation episodes: repeat rate, saturation and same-action rate (means
    over the episodes) and the standardized sensitivity of its deterministic action to its observation."""
    per_episode = [action_stats(r.unsqueeze(0), group, [agent], bounds, det, index=i)[0] for r in rollouts]
    pick = lambda k: float(np.nanmean([s.get(f"policy/{k}/{agent}", np.nan) for s in per_episode]))  # noqa: E731
    flat = torch.cat([r.reshape(-1) for r in rollouts])
    return AgentActionStats(repeat_rate=pick("repeat_rate"), saturation=pick("saturation"),
                            batch_same_action=pick("batch_same_action"), sensitivity=sensitivity(policy, flat, group, i, continuous))


def sensitivity(policy: Any, flat: Any, group: str, i: int, continuous: bool = True) -> float:
    """Standardized sensitivity of agent ``i``'s deterministic action (a categorical policy: its action probabilities) to
    its own observation, on the states of ``flat`` (the other agents' observations held fixed), with the policy in eval
    mode. Differentiates a copy of the observations; no random numbers drawn. NaN for a policy with neither a
    continuous action nor logits (value-based: the argmax of Q has no gradient)."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    td = flat.select(*policy.in_keys).clone()
    obs = td.get((group, "observation"))
    if not continuous and (group, "logits") not in flat.keys(True):
        return float("nan")

    def act(o: torch.Tensor) -> torch.Tensor:
        x = torch.stack([o if j == i else obs[:, j] for j in range(obs.shape[1])], dim=1)
        sample = td.clone(False)
        sample.set((group, "observation"), x)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            out = policy(sample)
        return out.get((group, "action"))[:, i] if continuous else torch.softmax(out.get((group, "logits"))[:, i], -1)

    with torch.enable_grad(), eval_mode(policy):
        return standardized_sensitivity(act, obs[:, i])


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for an extra measurement pass (BatchNorm reads its running statistics and updates
    none), restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in modes:
            m.training = False
        yield
    finally:
        for m, training in modes:
            m.training = training


def team_returns(td: Any, group_map: dict[str, list[str]], done_only: bool) -> np.ndarray:
    """Team returns (the sum over every agent of every group): of the episodes that ended inside a collected batch
    (``done_only``: read from BenchMARL's ``episode_reward`` at the done steps), or of one evaluation episode (the sum
    of its rewards over time)."""
    if not done_only:
        total = sum(float(td.get(("next", g, "reward")).sum()) for g in group_map)
        return np.array([total])
    dims = td.batch_dims
    first = next(iter(group_map))
    done = _done(td, first)
    if not bool(done.any()):
        return np.array([])
    total = sum(_as_env_time(td.get(("next", g, "episode_reward")), dims).reshape(*done.shape, -1).sum(-1)
                for g in group_map)
    return total[done].double().cpu().numpy()


def entropy_per_dim(entropy: float, bounds: Bounds, continuous: bool) -> float:
    """BenchMARL's policy entropy (per agent, summed over its action dimensions, in the action space's units) as this
    project's detectors read it: per action dimension, in units of the action range (continuous), nats (categorical)."""
    if not continuous or bounds is None:
        return float(entropy)
    span = (bounds[1][0] - bounds[0][0]).double()
    return float((entropy - span.log().sum()) / span.numel())


# --------------------------------------------------------------------------- plasticity
def _shared_nets(module: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, list[torch.nn.Module]]]:
    """(the module that computes hidden features, its activation modules) of every BenchMARL MLP inside ``module``
    whose parameters are shared by the agents (per-agent MLPs run under vmap: their features are not observable)."""
    from torchrl.modules import MLP, MultiAgentMLP

    for m in module.modules():
        if isinstance(m, MultiAgentMLP) and m.share_params:
            net = m._empty_net
        elif isinstance(m, torch.nn.ModuleList) and len(m) == 1 and isinstance(m[0], MLP):
            net = m[0]
        else:
            continue
        units = [u for u in net.modules() if isinstance(u, net.activation_class)] if hasattr(net, "activation_class") else []
        if units:
            yield m, units


def _networks(loss: Any) -> Iterator[tuple[str, torch.nn.Module, Any]]:
    """(kind, network, its parameters) of a torchrl loss module: ``actor`` and ``critic``/``qvalue``/``value``."""
    for attr, kind in (("actor_network", "actor"), ("critic_network", "critic"), ("qvalue_network", "critic"),
                       ("value_network", "critic")):
        net = getattr(loss, attr, None)
        if isinstance(net, torch.nn.Module):
            yield kind, net, getattr(loss, f"{attr}_params", None)


@torch.no_grad()
def plasticity_metrics(loss: Any, group: str, batch: Any, taus: Sequence[float] = (0.0, 0.1),
                       max_batch: int = 256) -> dict[str, float]:
    """``plasticity/`` scalars of the group's actor and critic MLPs on (at most ``max_batch`` evenly spaced rows of) the
    batch they last trained on: one extra forward pass of each model, no parameter, buffer or random stream touched."""
    from benchmarl.models.common import Model

    rows = batch[plasticity.even_rows(batch.shape[0], max_batch)] if batch.batch_dims else batch
    out: dict[str, float] = {}
    for kind, net, params in _networks(loss):
        ctx = params.to_module(net) if params is not None else contextlib.nullcontext()
        with ctx, eval_mode(net):
            for model in (m for m in net.modules() if isinstance(m, Model)):
                for _, units in _shared_nets(model):
                    captured: list[torch.Tensor] = []
                    handles = [u.register_forward_hook(lambda _m, _i, o: captured.append(o.reshape(-1, o.shape[-1])))
                               for u in units]
                    try:
                        model(rows.clone(False))
                    finally:
                        for h in handles:
                            h.remove()
                    if len(captured) == len(units):
                        values = plasticity.metrics_of(captured, captured[-1], taus)
                        out.update({plasticity.tag_of(f"{kind}/{group}", k): v for k, v in values.items()})
                    break
    return out
