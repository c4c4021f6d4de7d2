"""Built-in hooks that steer or record the run rather than measure it: the non-finite policy (stop or
rollback, as objects), forensics, the TensorBoard sink and the progress bar."""

from __future__ import annotations

import collections
import math
import re
import sys
import time
from typing import Any, Optional, Sequence

from tqdm import tqdm

from marl_stability.config import dump_yaml
from marl_stability.core.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    save_checkpoint,
)
from marl_stability.core.events import (
    EnvStepEvent,
    EvaluationEvent,
    NonFiniteEvent,
    UpdateEvent,
)
from marl_stability.core.hooks import Hook, RunContext
from marl_stability.core.plasticity import tau_label
from marl_stability.core.sinks import ScalarFileSink, TensorBoardSink
from marl_stability.core.summary import RunSummary
from marl_stability.core.tb_run import METRICS, SUMMARY_TAG, hparams_of, metric_values, summary_text

FORENSICS_FORMAT = 1


# --------------------------------------------------------------------------- non-finite policy
class NonFinitePolicy(Hook):
    """Counts non-finite events and decides what happens next. ``stop`` (the default): skip non-finite
    updates and end the run as ``diverged`` after ``train.max_nonfinite`` of them or at once on a fatal one
    (a NaN parameter or action)."""

    name = "nonfinite"
    prefixes = ("health/nonfinite_events", "health/rollbacks", "health/events")

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)
        self.events = 0
        self.rollbacks = 0

    def on_nonfinite(self, ev: NonFiniteEvent) -> None:
        self.events += ev.count
        self.log.record("health/nonfinite_events", self.events, self.ctx.env_steps)
        self.react(ev)

    def react(self, ev: NonFiniteEvent) -> None:
        step = self.ctx.env_steps
        if ev.fatal or self.events >= self.ctx.cfg.train.max_nonfinite:
            self.ctx.stop("diverged", ev.reason)
            self.log.text("health/events", f"{ev.reason}; {self.events} non-finite events: stopping", step)
        else:
            self.log.text("health/events", ev.reason, step)

    def summary(self) -> dict[str, Any]:
        return {"nonfinite_events": self.events, "rollbacks": self.rollbacks}

    def state_dict(self) -> dict[str, Any]:
        return {"events": self.events, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.events, self.rollbacks = int(state["events"]), int(state["rollbacks"])


class RollbackPolicy(NonFinitePolicy):
    """``rollback``: keep an in-memory snapshot of networks and optimizers every ``train.snapshot_every``
    clean updates; on a non-finite event restore it and go on, up to ``train.max_rollbacks`` times."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.snapshot: Optional[dict[str, Any]] = None

    def on_start(self, resumed: bool) -> None:
        if self.snapshot is None:
            self.snapshot = self.ctx.algorithm.snapshot()

    def on_update(self, ev: UpdateEvent) -> None:
        if not ev.stats.nonfinite and ev.update % self.ctx.cfg.train.snapshot_every == 0:
            self.snapshot = self.ctx.algorithm.snapshot()

    def react(self, ev: NonFiniteEvent) -> None:
        step = self.ctx.env_steps
        if self.snapshot is not None and self.rollbacks < self.ctx.cfg.train.max_rollbacks:
            self.ctx.algorithm.restore(self.snapshot)
            self.rollbacks += 1
            self.log.record("health/rollbacks", self.rollbacks, step)
            self.log.text("health/events", f"{ev.reason}; rolled back to the last good snapshot "
                                           f"(rollback {self.rollbacks})", step)
            return
        self.ctx.stop("diverged", ev.reason)
        self.log.text("health/events", f"{ev.reason}; no rollback left: stopping", step)

    def state_dict(self) -> dict[str, Any]:
        # A resumed run must roll back to the same state.
        return {**super().state_dict(), "snapshot": self.snapshot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.snapshot = state["snapshot"]


def nonfinite_policy(ctx: RunContext) -> NonFinitePolicy:
    return RollbackPolicy(ctx) if ctx.cfg.train.on_nonfinite == "rollback" else NonFinitePolicy(ctx)


# --------------------------------------------------------------------------- forensics
def _json_safe(obj: Any) -> Any:
    """NaN/Inf are not JSON: write them as strings so the forensic files stay standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


class ForensicsHook(Hook):
    """On the first non-finite event of a run, ``forensics/``: the offending batch, parameters and gradients
    (``bundle.pt``), the event, the recent update statistics and the config."""

    name = "forensics"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.history: collections.deque[dict[str, float]] = collections.deque(maxlen=ctx.cfg.train.forensic_history)
        self.written = False

    def on_update(self, ev: UpdateEvent) -> None:
        norms = {f"grad_norm/{s.model}": s.norms.total for s in ev.stats.steps}  # the last step per network
        self.history.append({"env_steps": self.ctx.env_steps, "update": ev.update, **norms, **ev.stats.scalars})

    def on_nonfinite(self, ev: NonFiniteEvent) -> None:
        if self.written:
            return
        self.written = True
        folder = self.ctx.run_dir / "forensics"
        evidence = ev.evidence or {}
        tensors = {k: evidence.get(k, {}) for k in ("batch", "parameters", "gradients")}
        save_checkpoint(folder / "bundle.pt", {"format": FORENSICS_FORMAT, **tensors})
        event = {"reason": ev.reason, "env_steps": self.ctx.env_steps,
                 **{k: evidence.get(k) for k in ("update", "model", "what", "loss")}}
        atomic_write_json(folder / "event.json", _json_safe(event))
        atomic_write_json(folder / "recent_metrics.json", _json_safe(list(self.history)))
        atomic_write_text(folder / "config.yaml", dump_yaml(self.ctx.cfg))

    def state_dict(self) -> dict[str, Any]:
        return {"written": self.written, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.written = bool(state["written"])
        self.history.clear()
        self.history.extend(dict(h) for h in state["history"])


# --------------------------------------------------------------------------- TensorBoard
# One dashboard per part of the failure story (TensorBoard's "Custom Scalars" tab).
DASHBOARD = {
    "Gradients": {
        "critic grad norm (pre-clip)": ["Multiline", [r"grad_norm/critic/.*"]],
        "actor grad norm (pre-clip)": ["Multiline", [r"grad_norm/actor/.*"]],
        "grad norm after clipping": ["Multiline", [r"optim/grad_norm_postclip/.*"]],
        "clip fraction": ["Multiline", [r"optim/clip_fraction/.*"]],
        "update/weight ratio": ["Multiline", [r"optim/update_ratio/.*"]],
    },
    "Critic": {
        "critic loss": ["Multiline", [r"loss/critic/.*"]],
        "Q mean / target": ["Multiline", [r"q/mean/.*", r"q/target_mean/.*"]],
        "Q range": ["Multiline", [r"q/min/.*", r"q/max/.*"]],
        "TD error": ["Multiline", [r"q/td_error_.*"]],
        "dQ/da (pull on the actor)": ["Multiline", [r"q/dq_da_norm/.*"]],
    },
    "Actor outputs": {
        "saturation": ["Multiline", [r"eval/saturation/.*"]],
        "repeated-action rate": ["Multiline", [r"eval/repeat_rate/.*"]],
        "same action for different states": ["Multiline", [r"eval/batch_same_action/.*"]],
        "sensitivity |da/dobs|": ["Multiline", [r"eval/sensitivity/.*"]],
        "max |pre-activation|": ["Multiline", [r"policy/preact_max_abs_batch/.*"]],
        "actor loss": ["Multiline", [r"loss/actor/.*"]],
    },
    "Rewards": {
        "team return (eval, train)": ["Multiline", [r"eval/team_return", r"rollout/team_return"]],
        "raw vs learner reward": ["Multiline", [r"reward/raw_batch_mean/.*", r"reward/learner_batch_mean/.*"]],
        "learner reward scale": ["Multiline", [r"reward/learner_scale"]],
    },
    "Health": {
        "non-finite": ["Multiline", [r"health/(nonfinite_events|nonfinite_updates|rollbacks)$",
                                     r"health/nonfinite_(grads|params)/.*"]],
        "env steps per second": ["Multiline", [r"perf/env_steps_per_second"]],
    },
}


TWIN_CHART = ("twin critics |Q1 - Q2|", ["Multiline", [r"q/twin_gap/.*"]])
# On-policy algorithms (MAPPO/IPPO) get their own dashboard: the trust region, the policy's spread, the value fit.
ON_POLICY_DASHBOARD = {
    "policy entropy (per action dim)": ["Multiline", [r"policy/entropy/.*"]],
    "approx KL": ["Multiline", [r"policy/approx_kl/.*"]],
    "PPO clip fraction": ["Multiline", [r"policy/clip_fraction/.*"]],
    "importance ratio max / min": ["Multiline", [r"policy/ratio_max/.*", r"policy/ratio_min/.*"]],
    "log-std mean / min / max": ["Multiline", [r"policy/log_std_.*"]],
    "policy / value loss": ["Multiline", [r"loss/policy/.*", r"loss/value/.*"]],
    "explained variance": ["Multiline", [r"value/explained_variance/.*"]],
    "value normalizer mean / std": ["Multiline", [r"value/norm_.*"]],
    "advantage mean / std (before normalization)": ["Multiline", [r"value/advantage_.*"]],
}


def plasticity_dashboard(taus: Sequence[float]) -> dict[str, list[Any]]:
    """Every network on one chart per metric: the whole-network dormant fraction at each tau, the ranks, the norm."""
    charts: dict[str, list[Any]] = {
        f"dormant units, tau {tau_label(t)} (whole network)": ["Multiline", [rf"plasticity/dormant_tau{re.escape(tau_label(t))}/.*/all"]]
        for t in taus}
    charts.update({
        "effective rank of the features": ["Multiline", [r"plasticity/eff_rank/.*"]],
        "srank (directions holding 99%)": ["Multiline", [r"plasticity/srank/.*"]],
        "stable rank of the features": ["Multiline", [r"plasticity/stable_rank/.*"]],
        "feature norm": ["Multiline", [r"plasticity/feature_norm/.*"]],
    })
    return charts


def dashboard(stat_prefixes: tuple[str, ...], plasticity_taus: Optional[Sequence[float]] = None,
              focus: Optional[str] = None) -> dict[str, dict[str, list[Any]]]:
    """The Custom Scalars layout of a run: the charts above, plus the algorithm's own (MATD3's twin gap, the
    on-policy dashboard) and, when the plasticity metrics are on (their taus given), a Plasticity dashboard.
    ``focus`` (an agent's name): per-agent charts show that agent only (and networks shared by all agents), so a
    chart holds one line per run instead of one per run and agent."""
    layout = {cat: dict(charts) for cat, charts in DASHBOARD.items()}
    if "q/twin_gap/" in stat_prefixes:
        layout["Critic"][TWIN_CHART[0]] = TWIN_CHART[1]
    if "policy/" in stat_prefixes:
        layout["On-policy"] = dict(ON_POLICY_DASHBOARD)
    if plasticity_taus is not None:
        layout["Plasticity"] = plasticity_dashboard(plasticity_taus)
    if focus is not None:
        layout = {cat: {name: [kind, [_focused(p, focus) for p in pats]] for name, (kind, pats) in charts.items()}
                  for cat, charts in layout.items()}
    return layout


# Charts whose tags are not per agent or per network: every line is wanted.
_WHOLE_RUN = ("perf/", "eval/team_return", "rollout/team_return", "reward/learner_scale")


def _focused(pattern: str, agent: str) -> str:
    """``prefix.*`` -> only the tags of ``agent`` (or of a network shared by all agents) under that prefix."""
    if pattern.startswith(_WHOLE_RUN) or not pattern.endswith(".*"):
        return pattern
    return f"{pattern[:-2]}(?:.*/)?(?:{re.escape(agent)}|shared)$"


class TensorBoardHook(Hook):
    """The TensorBoard sink and the columnar scalar file (``scalars.npz``, what analysis reads): opened at start (a resumed run hides what a killed run wrote after its last
    checkpoint), with the dashboard layout and hparams on a new run, and the summary text at the end."""

    name = "tensorboard"
    prefixes = (SUMMARY_TAG, "hparams/")

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)
        # HParams labels: a sweep's trials name their arm; a single run is its own arm (its folder's name).
        self.labels = dict(ctx.extra.get("labels") or {"arm": ctx.run_dir.name})
        self.varying = tuple(ctx.extra.get("hparams_varying", ()))

    def on_start(self, resumed: bool) -> None:
        # Events logged at the checkpoint step itself were written before the checkpoint: keep them.
        sink = TensorBoardSink(self.ctx.run_dir, purge_step=self.ctx.env_steps + 1 if resumed else None)
        self.ctx.logger.sinks[:0] = [sink, ScalarFileSink(self.ctx.run_dir, self.ctx.env_steps if resumed else None)]
        if not resumed:
            plasticity = self.ctx.cfg.plasticity
            sink.custom_scalars(dashboard(self.ctx.algorithm.stat_prefixes, plasticity.taus if plasticity.enabled else None,
                                          focus=self.ctx.layout.agents[0]))
            on_policy = type(self.ctx.algorithm).on_policy
            sink.hparams(hparams_of(self.ctx.cfg, self.labels, on_policy), METRICS, self.varying)

    def before_checkpoint(self) -> None:
        # Flushed before the checkpoint: a kill -9 later loses nothing that the resumed run will not rewrite.
        self.ctx.logger.flush()

    def on_end(self, summary: RunSummary) -> None:
        self.log.record_dict(metric_values(summary), self.ctx.env_steps)
        self.log.text(SUMMARY_TAG, summary_text(summary, self.ctx.stop_reason), self.ctx.env_steps)


# --------------------------------------------------------------------------- progress
class ProgressHook(Hook):
    """The progress bar (off when not a TTY or with --quiet) and env steps per second between evaluations."""

    name = "progress"
    prefixes = ("perf/",)

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)
        self.bar: Any = None
        self._t, self._steps = 0.0, 0

    def on_start(self, resumed: bool) -> None:
        total = self.ctx.cfg.train.steps
        self.bar = tqdm(total=total, initial=min(self.ctx.env_steps, total), unit="step", dynamic_ncols=True,
                        disable=self.ctx.quiet or not sys.stderr.isatty(), desc=f"train {self.ctx.run_dir.name}")
        self._t, self._steps = time.perf_counter(), self.ctx.env_steps

    def on_env_step(self, ev: EnvStepEvent) -> None:
        self.bar.update(ev.actions.shape[0])

    def on_evaluation(self, ev: EvaluationEvent) -> None:
        now = self.ctx.env_steps, time.perf_counter()
        rate = (now[0] - self._steps) / max(now[1] - self._t, 1e-9)
        self.log.record("perf/env_steps_per_second", rate, self.ctx.env_steps)
        self._steps, self._t = now
        self.bar.set_postfix(eval_return=f"{ev.team_return:.1f}")

    def on_end(self, summary: RunSummary) -> None:
        if self.bar is not None:
            self.bar.close()
