"""Which of a run's fixes acted: measured where a fix can idle, stated where it acts by construction.

A fix bundle lists what a practitioner switched on, not what did the work: gradient clipping at a limit the
gradients never reach changes nothing, a reward scale of 1 is no scale. For every fix the run uses (the fix
registry's ``applied``), ``summary.json``'s ``fix_engagement`` says ``engaged`` and ``how``:

- ``grad_clip`` / ``grad_clip_10``: the share of gradient steps the clipper changed, per network kind
  (engaged when any was clipped);
- ``reward_scale``: the learner's reward scale over the run (engaged when it differed from 1);
- ``obs_norm``: how far the running statistics moved the inputs from themselves (engaged when some input's
  standard deviation left [0.9, 1.1] or its mean passed 0.1 standard deviations);
- ``huber`` (MADDPG's Huber critic loss): the share of updates whose largest TD error exceeded the Huber
  delta (beyond it the loss is linear: engaged when any did);
- every other fix acts by construction (an optimizer, an output head, an init, a layer): ``engaged`` is
  null and ``how`` says where it acts.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from marl_stability.core.events import GradEvent, UpdateEvent
from marl_stability.core.hooks import Hook, RunContext
from marl_stability.fixes.registry import in_use

OBS_STD_BAND = (0.9, 1.1)
OBS_MEAN_SHIFT = 0.1  # |mean| / std


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}% of {whole}" if whole else "none"


class FixEngagementHook(Hook):
    """Counts what the measurable fixes did (clipped steps, reward scale range, large TD errors) and reads the
    observation normalizer at the end; writes ``fix_engagement`` into the summary (no tags)."""

    name = "fix_engagement"
    prefixes = ()

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.clipped: dict[str, list[int]] = {}  # network kind -> [steps, clipped steps]
        self.scale: Optional[list[float]] = None  # [min, max] learner reward scale
        self.td = [0, 0]  # [updates, updates with a TD error beyond the Huber delta]

    def after_clip(self, ev: GradEvent) -> None:
        if ev.clip is not None:
            counts = self.clipped.setdefault(ev.kind, [0, 0])
            counts[0] += 1
            counts[1] += int(ev.clip.clipped)

    def on_update(self, ev: UpdateEvent) -> None:
        scale = ev.stats.scalars.get("reward/learner_scale")
        if scale is not None and np.isfinite(scale):
            self.scale = [scale, scale] if self.scale is None else [min(self.scale[0], scale), max(self.scale[1], scale)]
        td = [v for k, v in ev.stats.scalars.items() if k.startswith("q/td_error_max")]
        if td:
            self.td[0] += 1
            self.td[1] += int(max(td) > self.huber_delta)

    @property
    def huber_delta(self) -> float:
        return float(self.ctx.cfg.maddpg.huber_delta)  # the config in effect (train.heal may change it mid-run)

    # ------------------------------------------------------------------ the verdicts
    def _clip(self) -> tuple[bool, str]:
        parts = [f"{kind} clipped in {_pct(c, n)} gradient steps" for kind, (n, c) in sorted(self.clipped.items())]
        return any(c for _, c in self.clipped.values()), "; ".join(parts) or "no gradient step measured"

    def _reward(self) -> tuple[bool, str]:
        if self.scale is None:
            return False, "no update yet"
        lo, hi = self.scale
        return not (lo == hi == 1.0), f"learner reward scale {lo:.3g} to {hi:.3g} over the run (1 = unchanged)"

    def _obs(self) -> tuple[Optional[bool], str]:
        rms = getattr(self.ctx.algorithm.fixes.obs, "rms", None)
        if rms is None:
            return None, "no running statistics"
        std, mean = np.sqrt(np.asarray(rms.var, np.float64)), np.asarray(rms.mean, np.float64)
        live = np.zeros(std.shape, bool)  # each agent's own inputs (the padding of smaller agents is no input)
        for i, dim in enumerate(self.ctx.layout.obs_dims):
            live[i, :dim] = True
        if not live.any():
            return False, "no inputs"
        s, shift = std[live], np.abs(mean[live]) / std[live]
        engaged = bool(((s < OBS_STD_BAND[0]) | (s > OBS_STD_BAND[1])).any() or (shift > OBS_MEAN_SHIFT).any())
        return engaged, (f"input std {s.min():.3g} to {s.max():.3g}, means up to {shift.max():.3g} std from 0, over "
                         f"{int(live.sum())} inputs (normalization divides by the std and removes the mean)")

    def _huber(self) -> tuple[bool, str]:
        n, beyond = self.td
        return bool(beyond), f"largest TD error beyond delta {self.huber_delta:g} in {_pct(beyond, n)} updates"

    def summary(self) -> dict[str, Any]:
        measured = {"grad_clip": self._clip, "grad_clip_10": self._clip, "reward_scale": self._reward,
                    "obs_norm": self._obs, "huber": self._huber}
        out: dict[str, Any] = {}
        for f in in_use(self.ctx.cfg, type(self.ctx.algorithm).on_policy):  # as the run ended (heals included)
            if f.id in measured:
                engaged, how = measured[f.id]()
            else:
                engaged, how = None, f"acts by construction ({f.acts_on}: {f.acts_at}); not measured"
            out[f.id] = {"engaged": engaged, "how": how}
        return {"fix_engagement": out}

    def state_dict(self) -> dict[str, Any]:
        return {"clipped": {k: list(v) for k, v in self.clipped.items()}, "scale": self.scale, "td": list(self.td)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clipped = {k: [int(x) for x in v] for k, v in state["clipped"].items()}
        self.scale = None if state["scale"] is None else [float(x) for x in state["scale"]]
        self.td = [int(x) for x in state["td"]]
