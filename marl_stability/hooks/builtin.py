"""The built-in hooks: what every run measures and how it reacts. Each owns its TensorBoard tag prefixes.

=====================  ============================================================================
hook (``name``)        owns
=====================  ============================================================================
``gradients``          pre/post-clip gradient norms, per-layer norms, clip fraction, update ratios,
                       non-finite gradient/parameter counts; the peak norm per network kind
``update_stats``       the algorithm's own update statistics (losses, Q, TD error, rewards, ...)
``episodes``           training episode returns
``train_actions``      histograms of the actions taken while training
``evaluation``         evaluation returns, action statistics (repeat, saturation, same action,
                       sensitivity), action and pre-activation histograms, value check
``story``              the ``Story/`` group TensorBoard opens first: team return, then the first three
                       agents' repeat rate, saturation and critic gradient norm (copies of the above)
``plasticity``         dormant-unit ratios, effective/stable rank and feature norm of every network's
                       hidden features on the update batch (``marl_stability.core.plasticity``)
``detectors``          the failure detectors (explosion, collapse, non-finite) and their messages
``fix_engagement``     which of the run's fixes acted (summary.json ``fix_engagement``; no tags)
``nonfinite``          the non-finite policy (stop or rollback) and its counters
``forensics``          the evidence bundle of the first non-finite event (files, no tags)
``tensorboard``        the TensorBoard sink, its dashboard layout, hparams and the summary text
``progress``           the progress bar and env steps per second
=====================  ============================================================================
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import torch

from marl_stability.core import plasticity
from marl_stability.core.events import (
    EnvStepEvent,
    EpisodesEvent,
    EvaluationEvent,
    GradEvent,
    NonFiniteEvent,
    UpdateEvent,
)
from marl_stability.core.hooks import Hook, RunContext
from marl_stability.core.tb_run import STORY_AGENTS, STORY_GROUP
from marl_stability.hooks import monitor
from marl_stability.core.summary import AgentActionStats, action_summary
from marl_stability.hooks.control import (
    ForensicsHook,
    ProgressHook,
    TensorBoardHook,
    nonfinite_policy,
)
from marl_stability.hooks.detectors import Detectors, standardized_sensitivity
from marl_stability.hooks.engagement import FixEngagementHook


def _every(n: int, k: int) -> bool:
    return n % k == 0


# --------------------------------------------------------------------------- gradients
class GradientStatsHook(Hook):
    """Gradient statistics (``monitor.GradientStats``) from the one measurement the clipper used, every
    update; ``train.log_every`` decides which updates are written, ``train.layer_stats_every`` which get
    per-layer statistics and update ratios (those need a copy of the weights before the step, so they are
    sampled). Also keeps the peak pre-clip norm per network kind for the summary."""

    name = "gradients"
    prefixes = ("grad_norm/", "optim/grad_norm_postclip/", "layers/grad_norm/", "layers/weight_norm/", "optim/clip_active/",
                "optim/clip_fraction/", "optim/update_ratio/", "layers/update_ratio/", "health/nonfinite_grads/",
                "health/nonfinite_params/")

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)
        t = ctx.cfg.train
        self.log_every, self.layer_every, self.layer_stats = t.log_every, t.layer_stats_every, t.layer_stats
        self.stats = monitor.GradientStats()
        self.max_norm: dict[str, float] = {"actor": 0.0, "critic": 0.0}
        self._names: dict[str, list[str]] = {}

    def _param_names(self, ev: GradEvent) -> list[str]:
        names = self._names.get(ev.model)
        if names is None:
            module = self.ctx.algorithm.modules().get(ev.model)
            by_id = {id(p): n for n, p in module.named_parameters()} if module is not None else {}
            names = self._names[ev.model] = [by_id.get(id(p), f"param{i}") for i, p in enumerate(ev.norms.params)]
        return names

    def after_backward(self, ev: GradEvent) -> None:
        layers = self.layer_stats and _every(ev.update, self.layer_every)
        if layers or _every(ev.update, self.log_every):
            values = self.stats.backward(ev, self._param_names(ev) if layers else None, snapshot=layers)
            self.log.record_dict(values, self.ctx.env_steps)

    def on_update(self, ev: UpdateEvent) -> None:
        for step in ev.stats.steps:  # a completed update's steps only (one that raised never gets here)
            if step.finite:
                self.max_norm[step.kind] = max(self.max_norm.get(step.kind, 0.0), step.norms.total)

    def after_clip(self, ev: GradEvent) -> None:
        values = self.stats.clip(ev)  # the clip fraction counts every update
        if _every(ev.update, self.log_every):
            self.log.record_dict(values, self.ctx.env_steps)

    def after_step(self, ev: GradEvent) -> None:
        if self.stats.has_snapshot(ev.model):
            self.log.record_dict(self.stats.step(ev, self._param_names(ev)), self.ctx.env_steps)

    def summary(self) -> dict[str, Any]:
        return {"max_grad_norm": dict(self.max_norm)}

    def state_dict(self) -> dict[str, Any]:
        return {"max_norm": dict(self.max_norm), **self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.max_norm = {k: float(v) for k, v in state["max_norm"].items()}
        self.stats.load_state_dict(state)


# --------------------------------------------------------------------------- update statistics and episodes
class UpdateStatsHook(Hook):
    """Writes the scalars ``algorithm.update()`` returns, every ``train.log_every`` updates; its prefixes are
    the ones the algorithm declares (``Algorithm.stat_prefixes``)."""

    name = "update_stats"

    def __init__(self, ctx: RunContext) -> None:
        self.prefixes = tuple(ctx.algorithm.stat_prefixes)
        self.ctx, self.log, self.every = ctx, ctx.scoped(self), ctx.cfg.train.log_every

    def on_update(self, ev: UpdateEvent) -> None:
        if _every(ev.update, self.every):
            self.log.record_dict(ev.stats.scalars, self.ctx.env_steps)


class EpisodeHook(Hook):
    name = "episodes"
    prefixes = ("rollout/",)

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)

    def on_episodes(self, ev: EpisodesEvent) -> None:
        eps = ev.episodes
        values = {"rollout/team_return": float(np.mean([e["team_return"] for e in eps])),
                  "rollout/length": float(np.mean([e["length"] for e in eps]))}
        for a in self.ctx.layout.agents:
            values[f"rollout/agent_return/{a}"] = float(np.mean([e["agent_returns"][a] for e in eps]))
        self.log.record_dict(values, self.ctx.env_steps)


class TrainActionsHook(Hook):
    """Histograms of the (exploring) actions of the last env steps, every ``train.histogram_every`` updates."""

    name = "train_actions"
    prefixes = ("hist/train_actions/",)
    WINDOW = 64  # env steps kept (bounded memory when updates are rare)

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log, self.every = ctx, ctx.scoped(self), ctx.cfg.train.histogram_every
        self.window: collections.deque[np.ndarray] = collections.deque(maxlen=self.WINDOW + 1)

    def on_env_step(self, ev: EnvStepEvent) -> None:
        self.window.append(ev.actions)

    def state_dict(self) -> dict[str, Any]:
        return {"window": [np.asarray(a) for a in self.window]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.clear()
        self.window.extend(np.asarray(a) for a in state["window"])

    def on_update(self, ev: UpdateEvent) -> None:
        if not _every(ev.update, self.every) or not self.window:
            return
        acts = np.concatenate(list(self.window), axis=0)  # [T*B, N, A]
        lay = self.ctx.layout
        for i, a in enumerate(lay.agents):
            self.log.histogram(f"hist/train_actions/{a}", acts[:, i, : lay.act_dims[i]], self.ctx.env_steps)
        self.window.clear()


# --------------------------------------------------------------------------- evaluation
class EvaluationHook(Hook):
    """From an evaluation's raw samples, once: returns, per-agent action statistics (the monitor's pure
    functions), action and pre-activation histograms, and the value check. Attaches the action statistics
    to the event (``derived["action_stats"]``) for the detectors and users' hooks."""

    name = "evaluation"
    prefixes = ("eval/", "q/initial/", "q/mc_return/", "q/overestimation/", "hist/eval_actions/", "hist/eval_preact/")

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log, self.det = ctx, ctx.scoped(self), ctx.cfg.detectors
        self.final: dict[str, AgentActionStats] = {}

    def _agent_stats(self, i: int, ev: EvaluationEvent, obs_all: np.ndarray) -> tuple[AgentActionStats, np.ndarray,
                                                                                     np.ndarray]:
        lay, algo, det = self.ctx.layout, self.ctx.algorithm, self.det
        d = lay.act_dims[i]
        low, high = lay.act_low[i, :d], lay.act_high[i, :d]
        # what the env applies: clipped continuous actions (a linear head's 3.7 and 5.2 are the same action)
        seq = np.stack([np.clip(a[:, i, :d], low, high) for a in ev.taken])  # [T, n, d]
        counted = np.stack(ev.counted[1:]) if len(ev.taken) > 1 else np.zeros((0, seq.shape[1]), bool)
        acts = torch.as_tensor(seq.reshape(-1, d))
        o = torch.as_tensor(obs_all[:256, i, : lay.obs_dims[i]])
        policy = algo.policy_fn(i)
        if lay.discrete[i]:
            with torch.no_grad():
                saturation = monitor.discrete_saturation(policy(o))
        else:
            saturation = monitor.saturation_fraction(acts, low.tolist(), high.tolist(), det.saturation_margin)
        stats = AgentActionStats(
            repeat_rate=monitor.sequence_repeat_rate(seq, counted),
            saturation=saturation,
            batch_same_action=monitor.batch_same_action_rate(acts, det.same_action_atol, det.same_action_max_rows),
            sensitivity=standardized_sensitivity(policy, o),
        )
        with torch.no_grad():
            pre = algo.preactivations(i, torch.as_tensor(obs_all[:, i, : lay.obs_dims[i]]))
        return stats, seq.reshape(-1, d), pre.numpy()

    def on_evaluation(self, ev: EvaluationEvent) -> None:
        lay, step = self.ctx.layout, self.ctx.env_steps
        obs_all = np.concatenate(ev.observed)  # [T*n, N, D]
        stats: dict[str, AgentActionStats] = {}
        samples = {}
        for i, agent in enumerate(lay.agents):
            stats[agent], acts, pre = self._agent_stats(i, ev, obs_all)
            samples[agent] = (acts, pre)
            self.log.record_dict({f"eval/{k}/{agent}": v for k, v in stats[agent].model_dump().items()}, step)
        self.final = stats
        ev.derived["action_stats"] = stats
        if ev.value_initial is not None:
            for i, agent in enumerate(lay.agents):
                q0, g0 = float(ev.value_initial[:, i].mean()), float(ev.value_return[:, i].mean())
                self.log.record_dict({f"q/initial/{agent}": q0, f"q/mc_return/{agent}": g0,
                                      f"q/overestimation/{agent}": q0 - g0}, step)
        for agent, (acts, pre) in samples.items():
            for k in range(acts.shape[1]):
                self.log.histogram(f"hist/eval_actions/{agent}/dim{k}", acts[:, k], step)
            self.log.histogram(f"hist/eval_preact/{agent}", pre, step)
            self.log.record(f"eval/preact_max_abs/{agent}", float(np.abs(pre).max()), step)
        self.log.record("eval/team_return", ev.team_return, step)
        for a in lay.agents:
            self.log.record(f"eval/agent_return/{a}", float(np.mean([e["agent_returns"][a] for e in ev.episodes])), step)

    def summary(self) -> dict[str, Any]:
        return action_summary(self.final)

    def state_dict(self) -> dict[str, Any]:
        return {"final": {a: v.model_dump() for a, v in self.final.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.final = {a: AgentActionStats(**v) for a, v in state["final"].items()}


# --------------------------------------------------------------------------- the Story group
class StoryHook(Hook):
    """The ``Story/`` group TensorBoard opens first (:data:`marl_stability.core.tb_run.STORY_GROUP`): the team
    return, then each of the first three agents' repeat rate, saturation (from the evaluation's action statistics) and pre-clip critic gradient
    norm (every gradient step of every ``train.log_every``-th update, like ``grad_norm/``). The same numbers as their source tags."""

    name = "story"
    prefixes = (f"{STORY_GROUP}/",)

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)
        self.agents = set(ctx.layout.agents[:STORY_AGENTS]) | {"shared"}

    def on_evaluation(self, ev: EvaluationEvent) -> None:
        step, group = self.ctx.env_steps, STORY_GROUP
        values = {f"{group}/0_team_return": ev.team_return}
        for agent, st in (ev.derived.get("action_stats") or {}).items():
            if agent in self.agents:
                values[f"{group}/1_repeat_rate/{agent}"] = st.repeat_rate
                values[f"{group}/2_saturation/{agent}"] = st.saturation
        self.log.record_dict(values, step)

    def after_backward(self, ev: GradEvent) -> None:
        kind, _, owner = ev.model.partition("/")
        if kind == "critic" and owner in self.agents and _every(ev.update, self.ctx.cfg.train.log_every):
            self.log.record(f"{STORY_GROUP}/3_critic_grad_norm/{owner}", ev.norms.total, self.ctx.env_steps)


# --------------------------------------------------------------------------- plasticity
class PlasticityHook(Hook):
    """Every ``plasticity.every`` updates, right after the update: the plasticity and representation metrics of
    every network the algorithm names (``Algorithm.feature_probes``) on the batch it just trained on, one extra
    no-grad forward pass each. Tags ``plasticity/<metric>/<network>[/<layer>]``; the last measurement goes into
    ``summary.json`` (``plasticity``)."""

    name = "plasticity"
    prefixes = ("plasticity/",)

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)
        cfg = ctx.cfg.plasticity
        self.every, self.taus, self.max_batch = cfg.resolved_every(type(ctx.algorithm).on_policy), tuple(cfg.taus), cfg.max_batch
        self.last: dict[str, Any] = {}

    def on_update(self, ev: UpdateEvent) -> None:
        if not _every(ev.update, self.every):
            return
        probes = self.ctx.algorithm.feature_probes(self.max_batch)
        if not probes:
            return
        networks = plasticity.measure_all(probes, self.taus, self.max_batch)
        self.log.record_dict({plasticity.tag_of(net, k): v for net, values in networks.items() for k, v in values.items()},
                             self.ctx.env_steps)
        self.last = {"env_steps": self.ctx.env_steps, "update": ev.update, "networks": networks}

    def summary(self) -> dict[str, Any]:
        return {"plasticity": dict(self.last)}

    def state_dict(self) -> dict[str, Any]:
        return {"last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last = dict(state["last"])


# --------------------------------------------------------------------------- detectors
class DetectorHook(Hook):
    """Feeds the failure detectors: every finite pre-clip gradient norm, every evaluation's action statistics,
    every non-finite count; writes each detector's message as text when it fires."""

    name = "detectors"
    prefixes = ("detectors/",)

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)
        self.detectors = Detectors(ctx.cfg.detectors)

    def _flush(self) -> None:
        for name, at, message in self.detectors.fired_events():
            self.log.text(f"detectors/{name}", f"env step {at}: {message}", self.ctx.env_steps)

    def on_update(self, ev: UpdateEvent) -> None:
        for step in ev.stats.steps:  # every finite pre-clip norm of a completed update
            if step.finite:
                self.detectors.update_grad_norm(step.model, step.norms.total, self.ctx.env_steps)
        self._on_policy(ev.stats.scalars)
        self._flush()

    def _on_policy(self, scalars: dict[str, float]) -> None:
        """An on-policy algorithm's entropy and approx KL, as its update reported them (computed once, there)."""
        lay = self.ctx.layout
        for agent, discrete in zip(lay.agents, lay.discrete):
            entropy = scalars.get(f"policy/entropy/{agent}")
            if entropy is not None:
                self.detectors.update_entropy(agent, entropy, discrete, self.ctx.env_steps)
            kl = scalars.get(f"policy/approx_kl/{agent}")
            if kl is not None:
                self.detectors.update_kl(agent, kl, self.ctx.env_steps)

    def on_evaluation(self, ev: EvaluationEvent) -> None:
        for agent, st in ev.derived["action_stats"].items():
            self.detectors.update_actions(agent, st.repeat_rate, st.saturation, st.sensitivity, self.ctx.env_steps)
        self.detectors.update_return(ev.team_return, self.ctx.env_steps)
        self._flush()

    def on_nonfinite(self, ev: NonFiniteEvent) -> None:
        self.detectors.update_nonfinite(ev.count, self.ctx.env_steps)
        self._flush()

    def summary(self) -> dict[str, Any]:
        return self.detectors.summary()

    def state_dict(self) -> dict[str, Any]:
        return self.detectors.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.detectors.load_state_dict(state)


def builtin_hooks(ctx: RunContext) -> list[Hook]:
    """The hooks every run has, in dispatch order: the sink first (others write from on_start on), the
    measurements, then the detectors, forensics and the non-finite policy that read them, the bar last."""
    measurements = [GradientStatsHook(ctx), UpdateStatsHook(ctx), EpisodeHook(ctx), TrainActionsHook(ctx),
                    EvaluationHook(ctx), StoryHook(ctx)] + ([PlasticityHook(ctx)] if ctx.cfg.plasticity.enabled else [])
    return [TensorBoardHook(ctx), *measurements, FixEngagementHook(ctx), DetectorHook(ctx), ForensicsHook(ctx),
            nonfinite_policy(ctx), ProgressHook(ctx)]
