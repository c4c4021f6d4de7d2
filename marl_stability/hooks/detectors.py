"""Online detectors for the exploding-gradient / repeated-action failure, and a one-shot policy diagnosis.

Three detectors watch metric streams during training and each fires exactly once (two more for on-policy
algorithms, fed from their update statistics: ``EntropyCollapseDetector`` and ``KLSpikeDetector``):

- ``GradientExplosionDetector``: a gradient norm jumps far above its own recent median (or above an absolute bound);
- ``ActionCollapseDetector``: for ``patience`` consecutive evaluations the actions are repetitive AND saturated AND
  insensitive to the observation (all three, so bang-bang control that still tracks the state and a fresh
  small-init actor that outputs near-constant mid-range actions are both *not* collapse);
- ``NonFiniteDetector``: the first NaN/Inf count > 0.

``Detectors`` groups them (one explosion detector per gradient key, one collapse detector per agent) and
``diagnose_policy`` classifies a policy from one batch of observations. All state is plain python
(ints, floats, lists, dicts, None) so a resumed run fires at exactly the same step.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Sequence, Union

import torch

# DetectorConfig lives with the run config (config must not import torch); re-exported here.
from marl_stability.config import DetectorConfig  # noqa: F401
from marl_stability.fmt import fmt_number

# The action statistics are the monitor's (one implementation for our trainer and users' loops).
from marl_stability.hooks.monitor import (
    action_sensitivity,
    batch_same_action_rate,
    saturation_fraction,
)

Bound = Union[float, Sequence[float], torch.Tensor]
EXPLOSION_RULES = ("growth", "median_ratio")


# --------------------------------------------------------------------------- gradient explosion
class GradientExplosionDetector:
    """Fires once when a gradient norm grows far beyond a reference level, or exceeds ``absolute``.

    Two rules for the reference (``rule``); non-finite norms are skipped (they are the non-finite detector's):

    - ``"growth"`` (the default, calibrated on held-out seeds, see docs/detectors.md): the reference is the network's
      own early level, the median of its first ``baseline`` finite norms; fire when a norm exceeds ``ratio`` x
      that level. Scale-free, and it sees a slow exponential climb (a tenfold rise every few thousand steps)
      that a running median follows and never flags;
    - ``"median_ratio"``: the reference is the median of the previous ``window`` finite norms (armed after
      ``min_history`` of them): fire on a sudden jump of ``ratio`` x that median.

    Either way only norms above ``min_norm`` count for the ratio (a small-init actor's gradient growing from
    1e-3 to 1e-2 as learning starts is no explosion), and a zero reference never fires the ratio test.
    """

    def __init__(
        self,
        ratio: float = 10.0,
        window: int = 100,
        min_history: int = 20,
        absolute: float = 1e4,
        name: str = "explosion",
        min_norm: float = 0.0,
        rule: str = "median_ratio",
        baseline: int = 20,
    ) -> None:
        if min_history > window:
            raise ValueError("min_history must be <= window")
        if rule not in EXPLOSION_RULES:
            raise ValueError(f"rule must be one of {EXPLOSION_RULES}, got {rule!r}")
        if baseline < 1:
            raise ValueError("baseline must be >= 1")
        self.ratio = float(ratio)
        self.window = int(window)
        self.min_history = int(min_history)
        self.absolute = float(absolute)
        self.min_norm = float(min_norm)
        self.rule = rule
        self.baseline = int(baseline)
        self.name = name
        self.history: deque[float] = deque(maxlen=self.window)
        self.early: list[float] = []  # growth rule: the first `baseline` finite norms
        self.first_step: int | None = None
        self.message: str | None = None

    @property
    def fired(self) -> bool:
        return self.first_step is not None

    def median(self) -> float | None:
        """Median of the stored history (None when empty)."""
        return _median(self.history)

    def early_level(self) -> float | None:
        """Growth rule: median of the first ``baseline`` finite norms (None until that many were seen)."""
        return _median(self.early) if len(self.early) >= self.baseline else None

    def _reference(self) -> float | None:
        if self.rule == "growth":
            return self.early_level()
        return self.median() if len(self.history) >= self.min_history else None

    def _ratio_reason(self, norm: float, ref: float) -> str:
        n, r, x = fmt_number(norm, '.4g'), fmt_number(self.ratio, '.4g'), fmt_number(norm / ref, '.4g')
        if self.rule == "growth":
            return (f"norm {n} > {r} x its early level {fmt_number(ref, '.4g')} (median of its first "
                    f"{self.baseline} norms; {x}x)")
        return f"norm {n} > {r} x median {fmt_number(ref, '.4g')} of the previous {len(self.history)} ({x}x)"

    def update(self, norm: float, step: int) -> bool:
        """Feed one norm; True only on the call where the detector first fires."""
        norm = float(norm)
        if not math.isfinite(norm):
            return False  # NaN/Inf belongs to the non-finite detector and must not poison the median
        if self.fired:
            return False
        reason: str | None = None
        ref = self._reference()
        if norm > self.absolute:
            reason = f"norm {fmt_number(norm, '.4g')} > absolute bound {fmt_number(self.absolute, '.4g')}"
        # A zero reference (e.g. a fully vanished actor gradient) makes any positive norm an "infinite ratio";
        # that is recovery noise, not an explosion, so only the absolute bound applies then.
        elif ref is not None and ref > 0 and norm > self.ratio * ref and norm > self.min_norm:
            reason = self._ratio_reason(norm, ref)
        if reason is not None:
            self.first_step = int(step)
            self.message = f"gradient explosion [{self.name}] at step {int(step)}: {reason}"
            return True
        self.history.append(norm)
        if len(self.early) < self.baseline:
            self.early.append(norm)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "early": list(self.early), "first_step": self.first_step,
                "message": self.message}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque((float(v) for v in state["history"]), maxlen=self.window)
        self.early = [float(v) for v in state.get("early", [])]  # absent in checkpoints of older versions
        self.first_step = None if state["first_step"] is None else int(state["first_step"])
        self.message = state["message"]


def _median(values: Sequence[float] | deque[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


# --------------------------------------------------------------------------- streaks: action and entropy collapse
class StreakDetector:
    """Fires once after ``patience`` consecutive bad readings; ``first_step`` is the step of the first reading
    of that streak (the onset), not the confirming one. Subclasses say what is bad and write the message."""

    def __init__(self, patience: int, name: str) -> None:
        if patience < 1:
            raise ValueError("patience must be >= 1")
        self.patience, self.name = int(patience), name
        self.streak = 0
        self.streak_start: int | None = None
        self.first_step: int | None = None
        self.message: str | None = None

    @property
    def fired(self) -> bool:
        return self.first_step is not None

    def _advance(self, bad: bool, step: int) -> bool:
        """One reading; True when the streak reaches ``patience`` (sets ``first_step``; the caller the message)."""
        if not bad:
            self.streak, self.streak_start = 0, None
            return False
        if self.streak == 0:
            self.streak_start = int(step)
        self.streak += 1
        if self.streak < self.patience:
            return False
        self.first_step = self.streak_start
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self.streak, "streak_start": self.streak_start, "first_step": self.first_step,
                "message": self.message}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streak = int(state["streak"])
        self.streak_start = None if state["streak_start"] is None else int(state["streak_start"])
        self.first_step = None if state["first_step"] is None else int(state["first_step"])
        self.message = state["message"]


class ActionCollapseDetector(StreakDetector):
    """Fires once after ``patience`` consecutive evaluations that are repetitive AND saturated AND insensitive.

    ``first_step`` is the step of the first evaluation of that streak (the onset), not the confirming one.
    """

    def __init__(
        self,
        repeat_threshold: float = 0.9,
        saturation_threshold: float = 0.9,
        sensitivity_threshold: float = 1e-3,
        patience: int = 3,
        name: str = "collapse",
    ) -> None:
        super().__init__(patience, name)
        self.repeat_threshold = float(repeat_threshold)
        self.saturation_threshold = float(saturation_threshold)
        self.sensitivity_threshold = float(sensitivity_threshold)

    def is_collapsed(self, repeat_rate: float, saturation: float, sensitivity: float) -> bool:
        """One evaluation's verdict; NaN in any input compares False and so never counts as collapse."""
        return (
            repeat_rate >= self.repeat_threshold
            and saturation >= self.saturation_threshold
            and sensitivity <= self.sensitivity_threshold
        )

    def update(self, repeat_rate: float, saturation: float, sensitivity: float, step: int) -> bool:
        """Feed one evaluation; True only on the call where the detector first fires."""
        if self.fired:
            return False
        r, s, g = float(repeat_rate), float(saturation), float(sensitivity)
        if not self._advance(self.is_collapsed(r, s, g), step):
            return False
        self.message = (
            f"action collapse [{self.name}] since step {self.first_step} ({self.streak} consecutive evaluations, "
            f"confirmed at step {int(step)}): repeat {fmt_number(r, '.4g')} >= {fmt_number(self.repeat_threshold, '.4g')}, "
            f"saturation {fmt_number(s, '.4g')} >= {fmt_number(self.saturation_threshold, '.4g')}, "
            f"sensitivity {fmt_number(g, '.4g')} <= {fmt_number(self.sensitivity_threshold, '.4g')}"
        )
        return True


# --------------------------------------------------------------------------- degradation (not learning)
class DegradationDetector(StreakDetector):
    """Fires once when the team return has fallen from what the run had learned and stays down: the trailing median
    of the last evaluations (``core.returns.SMOOTH_EVALS``) lies more than ``z`` x the evaluation noise (robust,
    from the evaluations so far) below the best trailing median so far, at ``patience`` consecutive evaluations —
    counted only once that best lies more than the same margin above the run's first trailing median (the run
    learned something to lose; a dip before that is not a degradation) and ``min_evals`` evaluations exist.
    ``first_step`` is the first evaluation of that streak. The online form of the *degraded (dropped)* label of
    ``runs.labels``."""

    def __init__(self, z: float = 4.0, patience: int = 3, min_evals: int = 6, name: str = "degradation") -> None:
        super().__init__(patience, name)
        self.z, self.min_evals = float(z), int(min_evals)
        self.returns: list[float] = []

    def update(self, team_return: float, step: int) -> bool:
        """Feed one evaluation's team return; True only on the call where the detector first fires."""
        from marl_stability.core.returns import full_windows, noise_floor

        if not math.isfinite(team_return):
            return False
        self.returns.append(float(team_return))
        if self.fired or len(self.returns) < max(self.min_evals, 4):
            return False
        m, noise = full_windows(self.returns), noise_floor(self.returns)  # complete trailing windows only
        margin = self.z * noise
        learned = float(m.max() - m[0]) > margin
        drop = float(m.max() - m[-1])
        if not self._advance(learned and drop > margin, step):
            return False
        self.message = (f"degradation [{self.name}] since step {self.first_step} (confirmed at step {int(step)}): the "
                        f"team return's trailing median is {fmt_number(drop, '.3g')} below the run's best, more than "
                        f"{fmt_number(self.z, '.3g')} x its evaluation noise {fmt_number(noise, '.3g')}")
        return True

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "returns": list(self.returns)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.returns = [float(x) for x in state["returns"]]


# --------------------------------------------------------------------------- non-finite values
class NonFiniteDetector:
    """Fires once on the first count of non-finite values > 0 (a NaN count also fires: it is itself non-finite)."""

    def __init__(self, name: str = "nonfinite") -> None:
        self.name = name
        self.first_step: int | None = None
        self.message: str | None = None

    @property
    def fired(self) -> bool:
        return self.first_step is not None

    def update(self, count: int | float, step: int) -> bool:
        """Feed one count; True only on the call where the detector first fires."""
        if self.fired:
            return False
        c = float(count)
        if not (math.isnan(c) or c > 0):
            return False
        self.first_step = int(step)
        what = "a NaN count" if math.isnan(c) else f"{fmt_number(c, '.4g')} non-finite values"
        self.message = f"non-finite values [{self.name}] at step {int(step)}: {what}"
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"first_step": self.first_step, "message": self.message}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_step = None if state["first_step"] is None else int(state["first_step"])
        self.message = state["message"]


# --------------------------------------------------------------------------- on-policy: entropy collapse, KL spike
class EntropyCollapseDetector(StreakDetector):
    """Fires once when an agent's policy entropy stays at or below ``threshold`` for ``patience`` consecutive
    updates. The entropy is the one the on-policy algorithm reports (``policy/entropy/<agent>``): per action
    dimension, in units of the action range for continuous actions (0: uniform over the range; a Gaussian
    with std 1% of the range: about -3.2), in nats for categorical ones (log K when uniform, 0 when
    deterministic). ``first_step`` is the first update of the streak."""

    def __init__(self, threshold: float, patience: int = 5, name: str = "entropy_collapse") -> None:
        super().__init__(patience, name)
        self.threshold = float(threshold)

    def update(self, entropy: float, step: int) -> bool:
        """Feed one update's entropy; True only on the call where the detector first fires (NaN never counts)."""
        if self.fired:
            return False
        h = float(entropy)
        if not self._advance(h <= self.threshold, step):
            return False
        self.message = (f"entropy collapse [{self.name}] since step {self.first_step} ({self.streak} consecutive updates, "
                        f"confirmed at step {int(step)}): policy entropy {fmt_number(h, '.4g')} <= "
                        f"{fmt_number(self.threshold, '.4g')} per action dimension")
        return True


class KLSpikeDetector(GradientExplosionDetector):
    """Fires once when an update's approximate KL between the rollout policy and the updated one exceeds
    ``ratio`` x the median of the previous ``window`` updates (armed after ``min_history``, only for KL above
    ``min_kl``) or exceeds ``absolute``: the trust region broke (BenchMARL #144: NaN actions followed a spike
    of the PPO clip fraction). The same median test as the gradient-explosion detector, on another signal."""

    def __init__(self, ratio: float, window: int, min_history: int, absolute: float, min_kl: float,
                 name: str = "kl_spike") -> None:
        super().__init__(ratio, window, min_history, absolute, name=name, min_norm=min_kl)

    def update(self, norm: float, step: int) -> bool:
        fired = super().update(norm, step)
        if fired and self.message is not None:
            self.message = self.message.replace("gradient explosion", "KL spike", 1).replace("norm ", "approx KL ", 1)
        return fired


# --------------------------------------------------------------------------- container
def _min_step(dets: Sequence[Any]) -> int | None:
    steps = [d.first_step for d in dets if d.first_step is not None]
    return min(steps) if steps else None


class Detectors:
    """All detectors of one run, built from ``DetectorConfig``.

    - ``explosion``: key (e.g. ``"critic/agent_0"``) -> GradientExplosionDetector, created on first use;
      ``explosion_step`` is the min first_step over keys.
    - ``collapse``: agent -> ActionCollapseDetector, created on first use; ``collapse_step`` is the earliest
      onset (first_step) over agents that fired. "Any agent", not "all agents": one agent repeating one action
      already breaks the cooperative task, and in MADDPG the shared critics usually drag the others down after it,
      so waiting for every agent would date the failure late. ``collapse_steps()`` gives the per-agent steps.
    - ``nonfinite``: one NonFiniteDetector.
    - on-policy algorithms (fed from their update statistics): ``entropy``: agent -> EntropyCollapseDetector,
      ``kl``: agent -> KLSpikeDetector; ``entropy_collapse_step`` / ``kl_spike_step`` are the earliest. They
      appear in ``summary()`` once fed (an off-policy run's summary has the three keys it always had).
    """

    def __init__(self, cfg: DetectorConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else DetectorConfig()
        self.explosion: dict[str, GradientExplosionDetector] = {}
        self.collapse: dict[str, ActionCollapseDetector] = {}
        self.nonfinite = NonFiniteDetector()
        self.entropy: dict[str, EntropyCollapseDetector] = {}
        self.kl: dict[str, KLSpikeDetector] = {}
        c = self.cfg
        self.degradation = DegradationDetector(c.degradation_z, c.degradation_patience, c.degradation_min_evals)
        # (name, step, message) of detectors that fired and were not yet handed out by fired_events().
        self._pending: list[tuple[str, int, str]] = []

    def _explosion_for(self, key: str, rule: str | None = None) -> GradientExplosionDetector:
        """The detector of ``key``, created on first use with the config's rule (or ``rule``)."""
        det = self.explosion.get(key)
        if det is None:
            c = self.cfg
            rule = rule or c.explosion_rule
            det = GradientExplosionDetector(
                c.explosion_growth if rule == "growth" else c.explosion_ratio, c.explosion_window,
                c.explosion_min_history, c.explosion_absolute, name=f"explosion/{key}", min_norm=c.explosion_min_norm,
                rule=rule, baseline=c.explosion_baseline,
            )
            self.explosion[key] = det
        return det

    def _collapse_for(self, agent: str) -> ActionCollapseDetector:
        det = self.collapse.get(agent)
        if det is None:
            c = self.cfg
            det = ActionCollapseDetector(
                c.repeat_threshold, c.saturation_threshold, c.sensitivity_threshold, c.collapse_patience,
                name=f"collapse/{agent}",
            )
            self.collapse[agent] = det
        return det

    def _entropy_for(self, agent: str, discrete: bool) -> EntropyCollapseDetector:
        det = self.entropy.get(agent)
        if det is None:
            c = self.cfg
            threshold = c.entropy_collapse_discrete if discrete else c.entropy_collapse_continuous
            det = self.entropy[agent] = EntropyCollapseDetector(threshold, c.entropy_collapse_patience,
                                                                name=f"entropy_collapse/{agent}")
        return det

    def _kl_for(self, agent: str) -> KLSpikeDetector:
        det = self.kl.get(agent)
        if det is None:
            c = self.cfg
            det = self.kl[agent] = KLSpikeDetector(c.kl_spike_ratio, c.kl_spike_window, c.kl_spike_min_history,
                                                   c.kl_spike_absolute, c.kl_spike_min, name=f"kl_spike/{agent}")
        return det

    def update_entropy(self, agent: str, entropy: float, discrete: bool, step: int) -> bool:
        """Feed one update's policy entropy of ``agent`` (see EntropyCollapseDetector for its units)."""
        det = self._entropy_for(agent, discrete)
        fired = det.update(entropy, step)
        if fired:
            self._record(det)
        return fired

    def update_kl(self, agent: str, approx_kl: float, step: int) -> bool:
        """Feed one update's approximate KL of ``agent``'s policy."""
        det = self._kl_for(agent)
        fired = det.update(approx_kl, step)
        if fired:
            self._record(det)
        return fired

    def _record(self, det: Any) -> None:
        self._pending.append((det.name, int(det.first_step), str(det.message)))

    def update_grad_norm(self, key: str, norm: float, step: int) -> bool:
        """Feed one gradient norm for ``key``; True when that key's detector fires now."""
        det = self._explosion_for(key)
        fired = det.update(norm, step)
        if fired:
            self._record(det)
        return fired

    def update_actions(self, agent: str, repeat: float, saturation: float, sensitivity: float, step: int) -> bool:
        """Feed one evaluation of ``agent``'s actions; True when that agent's detector fires now."""
        det = self._collapse_for(agent)
        fired = det.update(repeat, saturation, sensitivity, step)
        if fired:
            self._record(det)
        return fired

    def update_return(self, team_return: float, step: int) -> bool:
        """Feed one evaluation's team return; True when the degradation detector fires now."""
        fired = self.degradation.update(team_return, step)
        if fired:
            self._record(self.degradation)
        return fired

    def update_nonfinite(self, count: int | float, step: int) -> bool:
        """Feed one non-finite count; True when the detector fires now."""
        fired = self.nonfinite.update(count, step)
        if fired:
            self._record(self.nonfinite)
        return fired

    @property
    def explosion_step(self) -> int | None:
        return _min_step(list(self.explosion.values()))

    @property
    def collapse_step(self) -> int | None:
        return _min_step(list(self.collapse.values()))

    @property
    def nonfinite_step(self) -> int | None:
        return self.nonfinite.first_step

    def explosion_steps(self) -> dict[str, int | None]:
        """Per-key firing step (None = not fired)."""
        return {k: d.first_step for k, d in self.explosion.items()}

    def collapse_steps(self) -> dict[str, int | None]:
        """Per-agent collapse onset step (None = not fired)."""
        return {a: d.first_step for a, d in self.collapse.items()}

    @property
    def fired(self) -> bool:
        """Some failure detector has fired."""
        return any(d.fired for d in self._all())

    def _all(self) -> list[Any]:
        return [*self.explosion.values(), *self.collapse.values(), self.nonfinite, *self.entropy.values(),
                *self.kl.values(), self.degradation]

    def summary(self) -> dict[str, Any]:
        """Steps of the three failure signals plus the messages of every fired detector, ordered by step."""
        fired = sorted((d for d in self._all() if d.first_step is not None), key=lambda d: (d.first_step, d.name))
        out: dict[str, Any] = {
            "explosion_step": self.explosion_step,
            "collapse_step": self.collapse_step,
            "nonfinite_step": self.nonfinite_step,
            "detector_messages": [d.message for d in fired],
        }
        if self.degradation.returns:
            out["degradation_step"] = self.degradation.first_step
        if self.entropy or self.kl:
            out["entropy_collapse_step"] = _min_step(list(self.entropy.values()))
            out["kl_spike_step"] = _min_step(list(self.kl.values()))
        return out

    def fired_events(self) -> list[tuple[str, int, str]]:
        """(name, step, message) for every detector that fired since the previous call (e.g. for TensorBoard text)."""
        out, self._pending = self._pending, []
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "explosion": {k: d.state_dict() for k, d in self.explosion.items()},
            "collapse": {a: d.state_dict() for a, d in self.collapse.items()},
            "nonfinite": self.nonfinite.state_dict(),
            "entropy": {a: [d.threshold, d.state_dict()] for a, d in self.entropy.items()},
            "kl": {a: d.state_dict() for a, d in self.kl.items()},
            "degradation": self.degradation.state_dict(),
            "pending": [[n, s, m] for n, s, m in self._pending],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Thresholds come from this object's config; only the streams' progress is restored.
        self.explosion, self.collapse = {}, {}
        for key, sd in state["explosion"].items():
            # A checkpoint from before the growth rule has no early norms, and a baseline rebuilt from the norms
            # after the resume could already sit on the explosion: keep the rule it ran with.
            self._explosion_for(key, None if "early" in sd else "median_ratio").load_state_dict(sd)
        for agent, sd in state["collapse"].items():
            self._collapse_for(agent).load_state_dict(sd)
        self.nonfinite.load_state_dict(state["nonfinite"])
        self.entropy, self.kl = {}, {}
        for agent, (threshold, sd) in state.get("entropy", {}).items():
            det = self._entropy_for(agent, False)
            det.threshold = float(threshold)  # the discrete/continuous threshold chosen when it was created
            det.load_state_dict(sd)
        for agent, sd in state.get("kl", {}).items():
            self._kl_for(agent).load_state_dict(sd)
        if "degradation" in state:  # a checkpoint from before the detector: it starts from the resume
            self.degradation.load_state_dict(state["degradation"])
        self._pending = [(str(n), int(s), str(m)) for n, s, m in state.get("pending", [])]


# --------------------------------------------------------------------------- policy helpers
def standardized_sensitivity(policy: Callable[[torch.Tensor], torch.Tensor], obs: torch.Tensor) -> float:
    """Mean over samples of ||d(action)/d(obs) . diag(sigma)||_F, sigma = each feature's std over this batch.

    How much the action moves for a one-standard-deviation change of each input: invariant to rescaled or
    offset observations (an ``obs_scale`` wrapper, input normalization with a tiny std on a constant
    feature), and a feature that never varies contributes nothing. The collapse threshold is on this.
    """
    x = obs.detach().float()
    mu = x.mean(dim=0)
    sigma = x.std(dim=0, unbiased=False)
    varies = sigma > 0
    z = torch.where(varies, (x - mu) / torch.where(varies, sigma, torch.ones_like(sigma)), torch.zeros_like(x))
    return action_sensitivity(lambda zz: policy(mu + zz * sigma), z)


def diagnose_policy(
    policy: Callable[[torch.Tensor], torch.Tensor],
    obs: torch.Tensor,
    low: Bound,
    high: Bound,
    cfg: DetectorConfig | None = None,
) -> dict[str, Any]:
    """Classify a policy from one batch of different observations.

    The batch-level same-action rate stands in for the repeat rate (one call, many states). Verdicts:
    ``collapsed`` (repetitive AND saturated AND insensitive), ``saturated_but_state_dependent`` (saturated,
    not collapsed: e.g. bang-bang control), else ``healthy``.
    """
    cfg = cfg if cfg is not None else DetectorConfig()
    if obs.ndim != 2 or obs.shape[0] < 2:
        raise ValueError(f"obs must be a (batch >= 2, obs_dim) tensor, got shape {tuple(obs.shape)}")
    with torch.no_grad():
        actions = policy(obs.float()).reshape(obs.shape[0], -1)
    sat = saturation_fraction(actions, low, high, cfg.saturation_margin)
    same = batch_same_action_rate(actions, cfg.same_action_atol, cfg.same_action_max_rows)
    sens = standardized_sensitivity(policy, obs)
    collapsed = ActionCollapseDetector(
        cfg.repeat_threshold, cfg.saturation_threshold, cfg.sensitivity_threshold
    ).is_collapsed(same, sat, sens)
    if collapsed:
        verdict = "collapsed"
    elif sat >= cfg.saturation_threshold:
        verdict = "saturated_but_state_dependent"
    else:
        verdict = "healthy"
    return {"saturation": sat, "batch_same_action": same, "sensitivity": sens, "verdict": verdict}
