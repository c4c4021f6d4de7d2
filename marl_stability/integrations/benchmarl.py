"""BenchMARL integration: this project's instrumentation and detectors on a BenchMARL experiment, with one line.

    from marl_stability.integrations.benchmarl import MarlStabilityCallback, mpe2_task
    experiment = Experiment(task=mpe2_task("simple_spread_v3"), ..., callbacks=[MarlStabilityCallback()])
    experiment.run()            # then: marl-stability doctor <experiment folder>/marl_stability

Install with ``pip install 'marl-stability[benchmarl]'`` (BenchMARL 1.5 on torchrl 0.11). What the callback measures
(every tag as our trainer names it, so TensorBoard, ``doctor``, ``mechanism`` and the run reader read it unchanged):

- gradients of every optimizer BenchMARL steps (``actor/<group>`` for ``loss_objective``/``loss_actor``,
  ``critic/<group>`` for the value/Q losses): pre-clip and post-clip global norms (BenchMARL clips inside
  ``Experiment._grad_clip``, which the callback wraps on this experiment instance), per-layer gradient and weight norms
  and update ratios every ``layer_stats_every`` iterations, non-finite gradients and parameters;
- the actions of every collected batch (saturation against the action spec's bounds, repeated-action rate within
  episodes, same action across states, the policy's pre-tanh mean and log-std) and the raw rewards;
- the loss statistics BenchMARL's loss returns (value loss, entropy, approx KL, clip fraction, explained variance);
  the entropy is converted to this project's unit (per action dimension, in units of the action range);
- at each BenchMARL evaluation (which runs only when BenchMARL has a logger or ``create_json``): the team return (the
  sum over all agents of their episode rewards, as everywhere in this project, not BenchMARL's mean over agents), the
  deterministic actions' repeat rate, saturation, same-action rate and standardized sensitivity;
- the plasticity metrics (dormant units, ranks, feature norm) of the policy and critic MLPs with shared parameters;
- the online detectors (explosion, collapse, non-finite, entropy collapse, KL spike, degradation), fed exactly as in
  our trainer, their messages in the TensorBoard Text tab.

The run folder holds ``config.yaml`` (BenchMARL's configuration under ``benchmarl`` plus the sections of ours it maps
to), TensorBoard events, ``scalars.npz`` and ``summary.json`` (rewritten at each evaluation, final when the experiment
closes: ``completed``, ``diverged`` on non-finite values, ``interrupted`` or ``crashed``). The callback never changes
what BenchMARL computes: it reads tensors and measures with ``torch.no_grad`` (sensitivity differentiates a copy of
the evaluation observations through the policy, with the parameters' ``.grad`` untouched) and draws no random numbers.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

try:
    from benchmarl.experiment.callback import Callback
    from tensordict import TensorDictBase
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("marl_stability.integrations.benchmarl needs BenchMARL: "
                      "pip install 'marl-stability[benchmarl]'") from err

from marl_stability.atomic import atomic_write_json, atomic_write_text
from marl_stability.config import DetectorConfig
from marl_stability.core.events import GradEvent
from marl_stability.core.sinks import Logger, ScalarFileSink, TensorBoardSink
from marl_stability.core.summary import AgentActionStats, EvalPoint, RunSummary, action_summary
from marl_stability.core.tb_run import METRICS, STORY_AGENTS, STORY_GROUP, SUMMARY_TAG, metric_values, summary_text
from marl_stability.fixes import benchmarl as benchmarl_fixes
from marl_stability.fixes.objects import ClipStats, measure_grads
from marl_stability.hooks import monitor
from marl_stability.hooks.control import dashboard
from marl_stability.hooks.detectors import Detectors
from marl_stability.integrations.benchmarl_bits import (
    action_stats,
    entropy_per_dim,
    eval_action_stats,
    kind_of,
    plasticity_metrics,
    team_returns,
)

__all__ = ["MarlStabilityCallback", "use_mpe2", "mpe2_task", "apply_fix"]

_CLIP_RTOL = 1e-6


# --------------------------------------------------------------------------- mpe2 for torchrl
def use_mpe2() -> None:
    """Let torchrl 0.11 build MPE tasks from the mpe2 package. torchrl imports ``pettingzoo.mpe``, which since
    pettingzoo 1.25 only raises "moved to mpe2", so BenchMARL cannot build any MPE task as installed. This replaces
    ``torchrl.envs.libs.pettingzoo._load_available_envs`` with one that offers mpe2's environments under the same task
    names (``simple_spread_v3``, ...), keeping torchrl's other PettingZoo families. Idempotent."""
    import types

    import torchrl.envs.libs.pettingzoo as tpz

    original = tpz._load_available_envs
    if getattr(original, "_marl_stability_mpe2", False):
        return

    def load() -> dict:
        from mpe2 import all_modules

        names = ("pettingzoo.mpe", "pettingzoo.mpe.all_modules")
        pkg, sub = types.ModuleType(names[0]), types.ModuleType(names[1])
        sub.mpe_environments = dict(all_modules.mpe_environments)  # type: ignore[attr-defined]
        pkg.all_modules = sub  # type: ignore[attr-defined]
        saved = {n: sys.modules.get(n) for n in names}
        sys.modules.update({names[0]: pkg, names[1]: sub})
        try:
            return original()
        finally:
            for n, mod in saved.items():
                if mod is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = mod

    load._marl_stability_mpe2 = True  # type: ignore[attr-defined]
    tpz._load_available_envs = load


def mpe2_task(name: str = "simple_spread_v3", max_cycles: int = 25, **config: Any) -> Any:
    """A BenchMARL ``PettingZooTask`` for an mpe2 task (``use_mpe2`` applied), with ``max_cycles`` 25 (the MPE papers'
    episode length and this project's; BenchMARL's default is 100) and any other task setting given."""
    from benchmarl.environments import PettingZooTask

    use_mpe2()
    member = name.rsplit("_v", 1)[0].upper()
    if member not in PettingZooTask.__members__:
        known = ", ".join(sorted(m.lower() for m in PettingZooTask.__members__ if m.startswith("SIMPLE")))
        raise ValueError(f"unknown MPE task {name!r}; BenchMARL knows {known}")
    task = PettingZooTask[member].get_from_yaml()
    task.config.update({"max_cycles": int(max_cycles), **config})
    return task


def apply_fix(fix_id: str, experiment_config: Any, algorithm_config: Any, model_config: Any = None,
              critic_model_config: Any = None) -> list[str]:
    """Apply one of this project's fixes (a registry id, as ``doctor`` names it) to BenchMARL config objects, in place;
    returns the settings applied. ValueError when BenchMARL 1.5 has no setting for the fix."""
    parts = {"experiment": experiment_config, "algorithm": algorithm_config, "model": model_config,
             "critic_model": critic_model_config}
    current = {k: _fields(v) for k, v in parts.items() if v is not None}
    settings, missing = benchmarl_fixes.settings_for(fix_id, current)
    if missing is not None:
        raise ValueError(f"fix {fix_id!r}: {missing}")
    edits = [(item.partition("=")[0].partition("."), _parse(item.partition("=")[2])) for item in settings]
    for (part, _, field), _value in edits:  # every part present before anything changes
        if parts.get(part) is None:
            raise ValueError(f"fix {fix_id!r} sets {part}.{field}: pass the {part} config")
    for (part, _, field), value in edits:
        setattr(parts[part], field, value)
    return settings


def _run_config(cb: MarlStabilityCallback, e: Any) -> dict[str, Any]:
    """The run's ``config.yaml``: BenchMARL's configuration, and the sections of ours it maps to."""
    task = dict(e.task.config) if hasattr(e.task, "config") else {}
    env_id = str(task.pop("task", getattr(e.task, "name", "")))
    bm = {"experiment": _fields(e.config), "algorithm": {"name": _algo(e), **_fields(e.algorithm_config)},
          "model": _fields(e.model_config), "critic_model": _fields(e.critic_model_config), "task": dict(task)}
    task.setdefault("continuous_actions", bool(e.continuous_actions))
    return {"framework": benchmarl_fixes.FRAMEWORK, "algo": _algo(e), "seed": int(e.seed),
            "env": {"id": env_id, "kwargs": task}, "train": {"steps": int(e.config.get_max_n_frames(e.on_policy))},
            "detectors": cb.det_cfg.model_dump(), **benchmarl_fixes.as_run_config(bm),
            benchmarl_fixes.BENCHMARL: bm}


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """A measurement of the callback that fails must not end the user's training: it warns once per method, counts the
    failure in ``summary.json`` (``hooks.benchmarl.errors``) and goes on; ``strict=True`` re-raises (the tests)."""
    import functools
    import warnings

    @functools.wraps(method)
    def call(self: MarlStabilityCallback, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as err:
            if self.strict:
                raise
            if method.__name__ not in self.errors:
                warnings.warn(f"marl-stability's BenchMARL callback: {method.__name__} failed ({err!r}); its "
                              "measurements are skipped, training goes on", RuntimeWarning, stacklevel=2)
            self.errors[method.__name__] = self.errors.get(method.__name__, 0) + 1
            return None

    return call


def _wrap_lifecycle(cb: MarlStabilityCallback, e: Any) -> None:
    """On this experiment instance: ``close`` also writes the final summary; the collection loop's exception (if any)
    is kept for the final status."""
    original = e.close

    def close() -> None:
        try:
            original()
        finally:
            cb.close()

    e.close = close
    loop = e._collection_loop

    def collection_loop() -> None:
        try:
            loop()
        except BaseException as err:  # BenchMARL's run() closes the experiment, then re-raises it
            cb._run_error = err
            raise

    e._collection_loop = collection_loop


def _final_status(cb: MarlStabilityCallback) -> str:
    """How the experiment ended, read when BenchMARL closes it (after its collection loop returned or raised)."""
    e, exc = cb.experiment, cb._run_error
    done = e.n_iters_performed >= e.config.get_max_n_iters(e.on_policy)
    finite = all(bool(torch.isfinite(p).all()) for _, params, _ in cb._models.values() for p in params)
    if cb.detectors.nonfinite_step is not None or not finite:
        return "diverged"
    if isinstance(exc, KeyboardInterrupt) or (exc is None and not done):
        return "interrupted"
    return "crashed" if exc is not None else "completed"


def _tensorboard_layout(cb: MarlStabilityCallback) -> None:
    """What TensorBoard shows for one of our runs: the dashboard layout (Custom Scalars) and the HParams entry (the
    BenchMARL settings the fixes touch)."""
    e, bm = cb.experiment, cb.config[benchmarl_fixes.BENCHMARL]
    cb.tb.custom_scalars(dashboard(("policy/",) if e.on_policy else (), (0.0, 0.1) if cb.plasticity_every else None,
                                   focus=None))  # per-agent and per-group tags alike (groups name BenchMARL's networks)
    hp: dict[str, Any] = {"arm": cb.dir.parent.name, "seed": int(e.seed), "algo": cb.config["algo"],
                          "env.id": cb.config["env"]["id"], "framework": benchmarl_fixes.FRAMEWORK}
    for part, keys in (("experiment", ("lr", "adam_eps", "clip_grad_norm", "clip_grad_val", "gamma")),
                       ("algorithm", ("entropy_coef", "lmbda", "scale_mapping", "use_tanh_normal", "loss_critic_type"))):
        hp.update({f"{part}.{k}": bm[part][k] for k in keys if isinstance(bm[part].get(k), (bool, int, float, str))})
    cb.tb.hparams({k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in hp.items()}, METRICS)


def _algo(e: Any) -> str:
    """The experiment's algorithm, as this project names it (``MappoConfig`` -> ``mappo``)."""
    return type(e.algorithm_config).__name__.removesuffix("Config").lower()


def _parse(raw: str) -> Any:
    if raw in ("True", "False"):
        return raw == "True"
    if raw.startswith("torch.nn."):
        return getattr(torch.nn, raw.rsplit(".", 1)[1])
    try:
        return int(raw) if raw.lstrip("-").isdigit() else float(raw)
    except ValueError:
        return raw


def _register_bounded_scale() -> None:
    from tensordict.nn import add_custom_mapping
    from tensordict.nn.utils import _MAPPINGS

    if benchmarl_fixes.BOUNDED_SCALE_MAPPING not in _MAPPINGS:
        add_custom_mapping(benchmarl_fixes.BOUNDED_SCALE_MAPPING, benchmarl_fixes.bounded_scale)


def _fields(cfg: Any) -> dict[str, Any]:
    """A BenchMARL config dataclass as plain data (classes by their dotted name)."""
    import dataclasses

    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = (f"{v.__module__}.{v.__qualname__}" if isinstance(v, type) else
                       v if isinstance(v, (int, float, str, bool, type(None))) else
                       [x for x in v] if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str)) for x in v)
                       else repr(v))
    return out


_register_bounded_scale()  # the log_std_bounds fix's scale mapping, usable by name once this module is imported


# --------------------------------------------------------------------------- the callback
class MarlStabilityCallback(Callback):
    """Attach this project's instrumentation to a BenchMARL ``Experiment`` (``callbacks=[MarlStabilityCallback()]``).

    ``logdir``: the run folder (default ``<experiment folder>/marl_stability``); ``detectors``: thresholds (this
    project's ``DetectorConfig``; default: ours); ``layer_stats_every``: iterations between per-layer statistics and
    update ratios; ``plasticity_every``: iterations between plasticity measurements (0: off)."""

    def __init__(self, logdir: str | Path | None = None, detectors: Optional[DetectorConfig] = None,
                 layer_stats_every: int = 10, plasticity_every: int = 10, strict: bool = False) -> None:
        super().__init__()
        use_mpe2()  # the experiment's task env is built after this, in Experiment.__init__
        self.logdir = None if logdir is None else Path(logdir)
        self.det_cfg = detectors if detectors is not None else DetectorConfig()
        self.layer_every, self.plasticity_every = max(1, int(layer_stats_every)), int(plasticity_every)
        self.seconds = 0.0  # time spent in this callback (its overhead on BenchMARL's loop)
        self.strict, self.errors = bool(strict), {}  # errors: method -> failures (see _guarded)
        self._detailed: dict[str, list[str]] = {}  # models whose per-layer statistics this iteration records
        self._pending_grad: dict[str, float] = {}  # the iteration's last clip statistics, written at its end
        self._last_batch: dict[str, TensorDictBase] = {}  # group -> the last minibatch it trained on
        self._closed = False

    # ------------------------------------------------------------------ setup
    def on_setup(self) -> None:
        t = time.perf_counter()
        e = self.experiment
        self.dir = self.logdir or Path(e.folder_name) / "marl_stability"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seconds, self._closed, self._run_error = 0.0, False, None
        self._detailed, self._pending_grad, self._last_batch = {}, {}, {}
        # A restored experiment reopens the sinks in on_load_state_dict, at the step it resumes from.
        self.log = Logger([]) if e.config.restore_file else self._open_sinks(None)
        self.detectors = Detectors(self.det_cfg)
        self.grads = monitor.GradientStats()
        self.peak = {"actor": 0.0, "critic": 0.0}
        self.iter_peak: dict[str, float] = {}
        self.evals: list[EvalPoint] = []
        self.final_actions: dict[str, AgentActionStats] = {}
        self.story_agents = [a for agents in e.group_map.values() for a in agents][:STORY_AGENTS]
        self.nonfinite_events = self.episodes = 0
        self.start = time.time()
        self._models = self._optimizer_models(e)
        self._wrap_clip(e)
        _wrap_lifecycle(self, e)
        self.config = _run_config(self, e)
        atomic_write_text(self.dir / "config.yaml", _yaml(self.config))
        if not e.config.restore_file:
            _tensorboard_layout(self)
        self._write_summary("running")
        self.seconds += time.perf_counter() - t

    def _open_sinks(self, resume_step: Optional[int]) -> Logger:
        self.tb = TensorBoardSink(self.dir, purge_step=None if resume_step is None else resume_step + 1)
        return Logger([self.tb, ScalarFileSink(self.dir, resume_step)])

    def _optimizer_models(self, e: Any) -> dict[int, tuple[str, list[torch.nn.Parameter], list[str]]]:
        """id(optimizer) -> (model name, the parameters it steps, their names in the loss module), read once; a step
        post-hook per optimizer for update ratios."""
        out = {}
        for group, optimizers in e.optimizers.items():
            names = {id(p): n for n, p in e.losses[group].named_parameters()}
            for loss_name, opt in optimizers.items():
                params = [p for g in opt.param_groups for p in g["params"]]
                out[id(opt)] = (f"{kind_of(loss_name)}/{group}", params,
                                [names.get(id(p), f"param{i}") for i, p in enumerate(params)])
                opt.register_step_post_hook(self._after_step)
        return out

    # ------------------------------------------------------------------ gradients
    def _wrap_clip(self, e: Any) -> None:
        original = e._grad_clip

        def grad_clip(optimizer: torch.optim.Optimizer) -> float:
            t = time.perf_counter()
            model, params, names = self._models[id(optimizer)]
            pre = measure_grads(params)
            self.seconds += time.perf_counter() - t
            total = original(optimizer)
            t = time.perf_counter()
            post = measure_grads(params).total if math.isfinite(pre.total) else pre.total
            ev = GradEvent(model, self.experiment.n_iters_performed + 1, pre,
                           ClipStats(pre.total, post, post < pre.total * (1 - _CLIP_RTOL)), finite=math.isfinite(pre.total))
            self._on_grad(ev, names)
            self.seconds += time.perf_counter() - t
            return total

        e._grad_clip = grad_clip

    @_guarded
    def _on_grad(self, ev: GradEvent, names: list[str]) -> None:
        step = self._env_steps()
        detailed = self.experiment.n_iters_performed % self.layer_every == 0 and ev.model not in self._detailed
        if detailed:
            self._detailed[ev.model] = names
        values = self.grads.backward(ev, names if detailed else None, snapshot=detailed)
        values.update(self.grads.clip(ev))
        self.iter_peak[ev.model] = max(self.iter_peak.get(ev.model, 0.0), ev.norms.total) if ev.finite else math.inf
        if ev.finite:
            self.peak[ev.kind] = max(self.peak.get(ev.kind, 0.0), ev.norms.total)
        else:
            self.nonfinite_events += 1
            self.detectors.update_nonfinite(1, step)
        self.detectors.update_grad_norm(ev.model, ev.norms.total, step)
        if detailed:  # the per-layer part now; the global norms once per iteration (on_train_end)
            self.log.record_dict({k: v for k, v in values.items() if k.startswith("layers/")}, step)
        self._pending_grad.update({k: v for k, v in values.items() if k.startswith(("optim/", "health/"))})

    @_guarded
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        t = time.perf_counter()
        model, params, _ = self._models[id(optimizer)]
        if self.grads.has_snapshot(model):
            ev = GradEvent(model, self.experiment.n_iters_performed + 1, measure_grads(params))
            self.log.record_dict(self.grads.step(ev, self._detailed.get(model)), self._env_steps())
        self.seconds += time.perf_counter() - t

    def _env_steps(self) -> int:
        return int(getattr(self.experiment, "total_frames", 0))

    # ------------------------------------------------------------------ collection and training
    @_guarded
    def on_batch_collected(self, batch: TensorDictBase) -> None:
        t = time.perf_counter()
        e, step = self.experiment, self._env_steps()
        self._detailed, self._pending_grad = {}, {}
        values: dict[str, float] = {}
        for group, agents in e.group_map.items():
            stats, bad = action_stats(batch, group, agents, self._bounds(group), self.det_cfg)
            values.update(stats)
            if bad:
                self.nonfinite_events += 1
                self.detectors.update_nonfinite(bad, step)
        returns = team_returns(batch, e.group_map, done_only=True)
        if returns.size:
            self.episodes += int(returns.size)
            values["rollout/team_return"] = float(returns.mean())
        self.log.record_dict(values, step)
        self.seconds += time.perf_counter() - t

    def _bounds(self, group: str) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        spec = self.experiment.test_env.full_action_spec[group, "action"]
        space = getattr(spec, "space", None)
        return (space.low, space.high) if hasattr(space, "low") else None

    @_guarded
    def on_train_end(self, training_td: TensorDictBase, group: str) -> None:
        t = time.perf_counter()
        e, step = self.experiment, self._env_steps()
        values = {f"grad_norm/{m}": v for m, v in self.iter_peak.items() if m.endswith(f"/{group}")}
        if f"critic/{group}" in self.iter_peak:
            values[f"{STORY_GROUP}/3_critic_grad_norm/{group}"] = self.iter_peak[f"critic/{group}"]
        values.update({k: v for k, v in self._pending_grad.items() if k.endswith(f"/{group}")})
        means = {k: float(torch.nanmean(training_td.get(k).float())) for k in training_td.keys()
                 if isinstance(k, str) and training_td.get(k).is_floating_point()}
        for key, tag in (("loss_objective", "loss/policy"), ("loss_actor", "loss/policy"), ("loss_critic", "loss/value"),
                         ("loss_qvalue", "loss/value"), ("loss_entropy", "loss/entropy"), ("kl_approx", "policy/approx_kl"),
                         ("clip_fraction", "policy/clip_fraction"), ("explained_variance", "value/explained_variance"),
                         ("ESS", "policy/ess")):
            if key in means:
                values[f"{tag}/{group}"] = means[key]
        if "entropy" in means:
            h = entropy_per_dim(means["entropy"], self._bounds(group), e.continuous_actions)
            values[f"policy/entropy/{group}"] = h
            if e.on_policy:
                self.detectors.update_entropy(group, h, not e.continuous_actions, step)
        if e.on_policy and "kl_approx" in means:
            self.detectors.update_kl(group, means["kl_approx"], step)
        if self.plasticity_every and e.n_iters_performed % self.plasticity_every == 0:
            values.update(self._plasticity(group))
        self.log.record_dict(values, step)
        self.iter_peak = {m: v for m, v in self.iter_peak.items() if not m.endswith(f"/{group}")}
        self._emit_detectors(step)
        self.seconds += time.perf_counter() - t

    def on_train_step(self, batch: TensorDictBase, group: str) -> None:
        self._last_batch[group] = batch  # a reference only: the plasticity metrics run on it at the iteration's end

    def _plasticity(self, group: str) -> dict[str, float]:
        batch = self._last_batch.get(group)
        return {} if batch is None else plasticity_metrics(self.experiment.losses[group], group, batch)

    # ------------------------------------------------------------------ evaluation
    @_guarded
    def on_evaluation_end(self, rollouts: list[TensorDictBase]) -> None:
        t = time.perf_counter()
        e, step = self.experiment, self._env_steps()
        returns = np.concatenate([team_returns(r, e.group_map, done_only=False) for r in rollouts]) if rollouts else np.array([])
        team = float(returns.mean()) if returns.size else float("nan")
        values = {"eval/team_return": team, f"{STORY_GROUP}/0_team_return": team}
        for group, agents in e.group_map.items():
            for i, agent in enumerate(agents):
                st = self._eval_actions(rollouts, group, i, agent)
                self.final_actions[agent] = st
                values.update({f"eval/{k}/{agent}": v for k, v in st.model_dump().items()})
                if agent in self.story_agents:
                    values.update({f"{STORY_GROUP}/1_repeat_rate/{agent}": st.repeat_rate,
                                   f"{STORY_GROUP}/2_saturation/{agent}": st.saturation})
                self.detectors.update_actions(agent, st.repeat_rate, st.saturation, st.sensitivity, step)
        self.detectors.update_return(team, step)
        self.evals.append(EvalPoint(env_steps=step, team_return=team))
        self.log.record_dict(values, step)
        self._emit_detectors(step)
        self._write_summary("running")
        self.log.flush()  # scalars.npz and the events as of this evaluation: a killed run keeps them
        self.seconds += time.perf_counter() - t

    def _eval_actions(self, rollouts: list[TensorDictBase], group: str, i: int, agent: str) -> AgentActionStats:
        policy = self.experiment.group_policies[group]
        return eval_action_stats(rollouts, group, i, agent, self._bounds(group), self.det_cfg, policy,
                                 bool(self.experiment.continuous_actions))

    # ------------------------------------------------------------------ detectors, state, end
    def _emit_detectors(self, step: int) -> None:
        for name, at, message in self.detectors.fired_events():
            self.log.text(f"detectors/{name}", f"env step {at}: {message}", step)

    def on_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict["marl_stability"] = {"detectors": self.detectors.state_dict(), "peak": dict(self.peak),
                                        "evals": [p.model_dump() for p in self.evals], "episodes": self.episodes,
                                        "nonfinite_events": self.nonfinite_events,
                                        "clip_counts": {k: list(v) for k, v in self.grads.clip_counts.items()}}

    def on_load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ours = state_dict.get("marl_stability")
        self.log = self._open_sinks(self._env_steps())
        if ours:
            self.detectors.load_state_dict(ours["detectors"])
            self.peak.update(ours["peak"])
            self.evals = [EvalPoint.model_validate(p) for p in ours["evals"]]
            self.episodes, self.nonfinite_events = int(ours["episodes"]), int(ours["nonfinite_events"])
            self.grads.clip_counts = {k: list(v) for k, v in ours.get("clip_counts", {}).items()}

    def close(self, status: Optional[str] = None) -> None:
        """Write the final summary (BenchMARL's ``Experiment.close`` calls this through the callback's wrapper)."""
        if self._closed:
            return
        self._closed = True
        status = status or _final_status(self)
        summary = self._write_summary(status, error=None if status != "crashed" else repr(self._run_error))
        step = self._env_steps()
        self.log.record_dict(metric_values(summary), step)
        self.log.text(SUMMARY_TAG, summary_text(summary), step)
        self.log.close()

    def _write_summary(self, status: str, error: Optional[str] = None) -> RunSummary:
        summary = summary_of(self, status, error)
        atomic_write_json(self.dir / "summary.json", summary.to_json())
        return summary


def summary_of(cb: MarlStabilityCallback, status: str, error: Optional[str] = None) -> RunSummary:
    """The run's ``summary.json`` as the callback has measured it so far."""
    e = cb.experiment
    returns = [p.team_return for p in cb.evals if p.team_return is not None and math.isfinite(p.team_return)]
    wall = time.time() - cb.start
    steps = cb._env_steps()
    return RunSummary(
        status=status, env=cb.config["env"]["id"], algo=cb.config["algo"], on_policy=bool(e.on_policy),
        seed=int(e.seed), env_steps=steps, updates=int(getattr(e, "n_iters_performed", 0)), episodes=cb.episodes,
        final_return=returns[-1] if returns else None, best_return=max(returns) if returns else None,
        max_grad_norm=dict(cb.peak), nonfinite_events=cb.nonfinite_events, **cb.detectors.summary(),
        **action_summary(cb.final_actions), eval_history=list(cb.evals), agents=[a for agents in e.group_map.values() for a in agents],
        wall_seconds=wall, env_steps_per_second=steps / wall if wall > 0 else None,
        hooks={"benchmarl": {"callback_seconds": round(cb.seconds, 3), "errors": dict(cb.errors),
                             "iterations": int(getattr(e, "n_iters_performed", 0))}},
        error=error)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
