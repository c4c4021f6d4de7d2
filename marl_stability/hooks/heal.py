"""``train.heal``: a run that heals itself. When a trigger fires (the explosion alarm, a non-finite value, the
action-collapse, entropy-collapse or KL-spike detector; the explosion alarm only off-policy unless switched on), the hook

1. diagnoses the road with the rule doctor uses (:func:`marl_stability.core.roads.road`, on the scalars logged so
   far: explosion-first, saturation-first, undetermined; an on-policy run's failure is its own road, ``on-policy``),
2. finds the onset -- the last point known clean: the logged step before the critic's gradient reached 10x its
   early level (explosion; off-policy non-finite), the last evaluation before any agent's saturation reached 0.5
   (collapse), the step before the detector's streak began (entropy, KL; on-policy non-finite: the update before)
   -- and rolls back to the last snapshot taken at or
   before it (networks, optimizers, normalizer statistics, detector state; the replay buffer's write position,
   so the failing policy's transitions are dropped; an on-policy rollout is dropped),
3. applies the fix ranked first for that road that a running run can take (the fix registry's ``live`` fixes; the
   single-fix tables' evidence first, then the practitioner's order; ``train.heal.fixes`` overrides the choice),
   keeping the fixes already applied, and goes on. A relapse rolls back again and adds the next fix, up to
   ``max_attempts``; after that a non-finite value stops the run as ``diverged`` and other alarms are recorded.

Env steps are never rewound: the steps spent on the failing stretch count in the budget and each heal records
them (``env_steps_lost``). Snapshots copy state and draw no random numbers, so a run that never triggers is the
run without heal, value for value. Everything is in ``summary.json`` (``healing``), the ``health/heal`` scalar,
the ``health/heal_log`` text and the Summary text; ``healed.yaml`` next to the run holds the config it ended with.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from marl_stability.atomic import atomic_write_text
from marl_stability.config import RunConfig, dump_yaml
from marl_stability.core import roads
from marl_stability.core.events import EvaluationEvent, NonFiniteEvent, UpdateEvent
from marl_stability.core.hooks import RunContext
from marl_stability.core.live import adopt, blockers, healed_config
from marl_stability.core.sinks import ScalarFileSink
from marl_stability.core.summary import RunSummary
from marl_stability.core.tb_run import heal_line
from marl_stability.errors import UserError
from marl_stability.fixes import evidence, registry
from marl_stability.hooks.builtin import DetectorHook
from marl_stability.hooks.control import NonFinitePolicy

EARLY_GROWTH = 10.0  # the onset of an explosion: the critic's gradient at 10x its early level (doctor's timeline)
HALF_SATURATED = 0.5  # the onset of a collapse: an agent's saturation at 0.5
HEALED_PRESET = "healed.yaml"


def candidates(cfg: RunConfig, algo_cls: type, road: str, tried: list[str]) -> list[registry.FixSpec]:
    """The fixes a heal may apply for ``road``, best first: ``train.heal.fixes`` in its order if given, else the
    family's advised fixes ranked by the road's single-fix table (cured seeds first, then unmeasured fixes in the
    practitioner's order, then measured fixes that cured none). Only fixes a running ``algo_cls`` can take, not in
    use already, not tried before."""
    family = registry.ON if algo_cls.on_policy else registry.OFF
    flat = cfg.to_dict()
    if cfg.train.heal.fixes:
        specs = [registry.get(f) for f in cfg.train.heal.fixes]
    else:
        specs = evidence.rank_by_evidence(registry.for_family(family), evidence.measured(road), lambda f: f.title)
    return [f for f in specs if f.live is not None and f.id not in tried and not f.applied(flat)
            and not blockers(algo_cls, _keys(f.overrides_for(flat))) and _changes(cfg, f.overrides_for(flat))]


def _changes(cfg: RunConfig, overrides: list[str]) -> bool:
    """The fix's settings make a valid config that differs from ``cfg`` (fewer epochs at 1 epoch changes nothing; a
    log-std bound that excludes the run's initial log-std is invalid): only such a fix is worth a heal."""
    try:
        return healed_config(cfg, overrides) != cfg
    except UserError:
        return False


def thin(ring: list[dict[str, Any]], keep: int) -> None:
    """Drop snapshots until ``keep`` remain: each time the one (never the oldest or the newest) whose neighbours are
    closest together relative to its age, so the ring spans the whole run with spacing that grows geometrically
    towards the past: dense just before an alarm, and a failure whose alarm comes long after its onset (a collapse
    confirmed over several evaluations) still finds a snapshot from before it."""
    while len(ring) > keep:
        now = ring[-1]["env_step"]
        gaps = [(ring[i + 1]["env_step"] - ring[i - 1]["env_step"]) / max(1, now - ring[i]["env_step"])
                for i in range(1, len(ring) - 1)]
        del ring[1 + gaps.index(min(gaps)) if gaps else 0]


def _keys(overrides: list[str]) -> list[str]:
    return [item.partition("=")[0].strip() for item in overrides]


class HealHook(NonFinitePolicy):
    """The non-finite policy of a run with ``train.heal.enabled`` (it takes the place of stop/rollback), and the
    healer of the other triggers. See the module docstring."""

    name = "heal"
    prefixes = (*NonFinitePolicy.prefixes, "health/heal")

    def __init__(self, ctx: RunContext, detectors: DetectorHook) -> None:
        super().__init__(ctx)
        self.hc = ctx.cfg.train.heal
        self.detectors = detectors
        algo_cls = type(ctx.algorithm)
        self.snapshot_every = self.hc.snapshot_every or (1 if algo_cls.on_policy else 25)
        for fix_id in self.hc.fixes:
            try:
                spec = registry.get(fix_id)
            except KeyError:
                raise UserError(f"train.heal.fixes: unknown fix {fix_id!r} (known: "
                                f"{', '.join(f.id for f in registry.FIXES)})") from None
            blocked = blockers(algo_cls, _keys(spec.overrides_for(ctx.cfg.to_dict())))
            if spec.live is None or blocked:
                raise UserError(f"train.heal.fixes: {fix_id} cannot be applied to a running {algo_cls.__name__} run "
                                f"({'only at the start of a run' if spec.live is None else 'it changes ' + ', '.join(blocked)})")
        self.base: Optional[dict[str, Any]] = None  # the snapshot before the first update (after a heal: its result)
        self.ring: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []
        self.overrides: list[str] = []  # every --set item applied so far, in order
        self.since: Optional[int] = None  # first env step of the current branch (after the last heal)
        self.healed_update: Optional[int] = None  # the update counter at the last heal
        self.gave_up = False

    # ------------------------------------------------------------------ snapshots
    def _snapshot(self) -> dict[str, Any]:
        algo, fixes = self.ctx.algorithm, self.ctx.algorithm.fixes
        return {"env_step": self.ctx.env_steps, "update": algo.updates, "algo": algo.snapshot(),
                "obs": copy.deepcopy(fixes.obs.state_dict()), "reward": copy.deepcopy(fixes.reward.state_dict()),
                "data": algo.data_mark(), "detectors": copy.deepcopy(self.detectors.state_dict())}

    def _restore(self, snap: dict[str, Any]) -> str:
        algo = self.ctx.algorithm
        algo.restore(snap["algo"])
        algo.fixes.obs.load_state_dict(copy.deepcopy(snap["obs"]))
        algo.fixes.reward.load_state_dict(copy.deepcopy(snap["reward"]))
        self.detectors.load_state_dict(copy.deepcopy(snap["detectors"]))
        return algo.rewind_data(snap["data"]) if snap["data"] is not None else ""

    def on_start(self, resumed: bool) -> None:
        if self.base is None:
            self.base = {**self._snapshot(), "pending": True}  # completed at the first update (see on_update)

    # ------------------------------------------------------------------ triggers
    def _fired(self) -> Optional[tuple[str, int, str]]:
        """(trigger, the detector's first step, its message) of the enabled trigger that fired earliest."""
        d, hc = self.detectors.detectors, self.hc
        on_explosion = hc.on_explosion if hc.on_explosion is not None else not type(self.ctx.algorithm).on_policy
        groups = (("explosion", on_explosion, d.explosion), ("collapse", hc.on_collapse, d.collapse),
                  ("entropy_collapse", hc.on_entropy_collapse, d.entropy), ("kl_spike", hc.on_kl_spike, d.kl))
        fired = [(int(det.first_step), k, trigger, str(det.message)) for k, (trigger, on, dets) in enumerate(groups)
                 if on for det in dets.values() if det.first_step is not None]
        if not fired:
            return None
        step, _, trigger, message = min(fired)  # the earliest (ties: in the order above)
        return trigger, step, message

    def on_update(self, ev: UpdateEvent) -> None:
        if self.base is not None and self.base.pop("pending", False):
            # The networks have not changed before the first update: the pinned snapshot stands for the state just
            # before it, with what the first policy collected (data, normalizer statistics) kept.
            fixes = self.ctx.algorithm.fixes
            self.base.update(env_step=self.ctx.env_steps, data=self.ctx.algorithm.data_mark(),
                             obs=copy.deepcopy(fixes.obs.state_dict()), reward=copy.deepcopy(fixes.reward.state_dict()))
        fired = self._fired()
        if fired is not None and not self.gave_up:
            self._heal(*fired)
            return
        if not ev.stats.nonfinite and ev.update % self.snapshot_every == 0 and fired is None:
            if self.ring and self.ring[-1]["env_step"] == self.ctx.env_steps:
                self.ring.pop()  # several updates per env step: the latest state of that step stands for it
            self.ring.append(self._snapshot())
            thin(self.ring, self.hc.keep)

    def on_evaluation(self, ev: EvaluationEvent) -> None:
        fired = self._fired()
        if fired is not None and not self.gave_up:
            self._heal(*fired)

    def react(self, ev: NonFiniteEvent) -> None:
        if not ev.fatal and self.healed_update == self.ctx.algorithm.updates:
            # the skipped steps of an update that a heal (fired by another detector in it) just undid: the detectors
            # were fed them before this hook; they go back to the state the heal left them in
            self.detectors.load_state_dict(copy.deepcopy(self.base["detectors"]))
            return
        if not (self.hc.on_nonfinite and not self.gave_up and self._heal("nonfinite", self.ctx.env_steps, ev.reason)):
            super().react(ev)

    # ------------------------------------------------------------------ the heal
    def _scalars(self) -> roads.Scalars:
        """The series logged so far that the road and onset rules read (from the run's scalar file in memory)."""
        sink = next((s for s in self.ctx.logger.sinks if isinstance(s, ScalarFileSink) and s.columns is not None), None)
        if sink is None:
            return {}
        cols = sink.columns
        wanted = ("grad_norm/", "eval/saturation/")
        return {tag: list(zip(cols.steps[tag].tolist(), cols.values[tag].tolist()))
                for tag in cols.steps if tag.startswith(wanted)}

    def _diagnose(self, trigger: str, first: int, message: str) -> tuple[str, str, int]:
        """(road, why, the last env step known clean)."""
        alarm, algo = self.ctx.env_steps, self.ctx.algorithm
        scalars = self._scalars()
        det = self.ctx.cfg.detectors.model_dump()
        config = self.ctx.cfg.to_dict()
        start = self.since if self.since is not None else roads.learning_start(scalars)
        if type(algo).on_policy:
            # MAPPO's failure lives in the policy head (its log-std drifts), not the critic: the onset is the update
            # before the detector's first step (a non-finite value: before this update); an explosion alarm, switched
            # on by the user, keeps the critic's growth rule
            clean = (self._growth_onset(scalars, config, det, start, None, alarm) if trigger == "explosion"
                     else min(first, alarm)) - 1
            return roads.ON_POLICY, f"{trigger.replace('_', ' ')} in an on-policy run: {message}", clean
        label = {"collapse": "collapsed", "nonfinite": "diverged"}.get(trigger, "explosion alarm")
        onset = first if trigger == "collapse" else alarm
        r = roads.road(scalars, config, det, label, onset, start=start)
        road = r["mechanism"] if r["mechanism"] in ("explosion-first", "saturation-first", "undetermined") else "neither"
        if road == "saturation-first" or (trigger == "collapse" and road != "explosion-first"):
            half, before = roads.eval_steps(scalars, "eval/saturation/", HALF_SATURATED, start)
            # without saturation (a collapse on the repeat rate alone): the evaluation before the detector's streak
            clean = before if half is not None and before is not None else (first if trigger == "collapse" else alarm) - 1
        else:
            clean = self._growth_onset(scalars, config, det, start, r["growth_step"], alarm) - 1
        return road, r["why"], min(clean, alarm - 1)

    @staticmethod
    def _growth_onset(scalars: roads.Scalars, config: dict[str, Any], det: dict[str, Any], start: Optional[int],
                      growth_step: Optional[int], alarm: int) -> int:
        """The first logged step where a critic's gradient norm reached 10x its early level (else the growth
        threshold's step, else the alarm: with no growth before it, the alarm or non-finite value is the onset)."""
        _, baseline, min_norm = roads.explosion_rule(config, det)
        grew = roads.first_growth(scalars, "grad_norm/critic/", baseline, EARLY_GROWTH, min_norm, start)
        at = grew if grew is not None else growth_step if growth_step is not None else alarm
        # the last logged critic norm before it is the last point known clean (updates between logs are unknown)
        logged = [st for tag, pts in scalars.items() if tag.startswith("grad_norm/critic/") for st, _ in pts if st < at]
        if logged and (start is None or max(logged) >= start):
            return max(logged) + 1
        return start if start is not None else at  # nothing logged in this branch before it: from its start

    def _target(self, clean: int) -> dict[str, Any]:
        """The last snapshot taken at or before ``clean`` (the pinned first one if none is)."""
        fits = [s for s in self.ring if s["env_step"] <= clean]
        return fits[-1] if fits else self.base  # type: ignore[return-value]

    def _heal(self, trigger: str, first: int, message: str) -> bool:
        """One heal; False when none is left (attempts used, or no fix left to apply)."""
        ctx, step = self.ctx, self.ctx.env_steps
        if self.records:
            self.records[-1]["outcome"] = f"relapsed: {trigger.replace('_', ' ')} at env step {step}"
        road, why, clean = self._diagnose(trigger, first, message)
        fixes = candidates(ctx.cfg, type(ctx.algorithm), road, [r["fix"] for r in self.records])
        if len(self.records) >= self.hc.max_attempts or not fixes:
            self.gave_up = True
            reason = (f"{self.hc.max_attempts} heals used" if fixes else "no fix left in train.heal.fixes"
                      if self.hc.fixes else "no fix left that a running run can take")
            self.log.text("health/heal_log", f"env step {step}: {trigger.replace('_', ' ')} ({message}); not healed: "
                                             f"{reason}", step)
            self.records.append({"attempt": len(self.records) + 1, "trigger": trigger, "alarm_step": step,
                                 "message": message, "road": road, "why": why, "fix": None,
                                 "outcome": f"not healed: {reason}"})
            return False
        snap = self._target(clean)
        dropped = self._restore(snap)
        fix = fixes[0]
        settings = fix.overrides_for(ctx.cfg.to_dict())
        new_cfg = healed_config(ctx.cfg, settings)
        adopt(ctx.algorithm, ctx.cfg, new_cfg)
        ctx.cfg = new_cfg
        self.overrides += settings
        self.rollbacks += 1
        record = {"attempt": len(self.records) + 1, "trigger": trigger, "alarm_step": step, "message": message,
                  "road": road, "why": why, "onset_step": clean + 1, "rolled_back_to": snap["env_step"],
                  "rolled_back_to_update": snap["update"], "fix": fix.id, "fix_title": fix.title, "settings": settings,
                  "env_steps_lost": step - snap["env_step"], "data": dropped, "outcome": "held to the end"}
        self.records.append(record)
        self.log.record("health/heal", len(self.records), step)
        self.log.record("health/rollbacks", self.rollbacks, step)
        self.log.text("health/heal_log", heal_line(record), step)
        # the new branch: its first snapshot is the restored state with the fix on; older ones belong to the old config
        self.ring.clear()
        self.base = self._snapshot()
        self.since, self.healed_update = step + 1, ctx.algorithm.updates
        return True

    # ------------------------------------------------------------------ the record
    def on_end(self, summary: RunSummary) -> None:
        if any(r["fix"] for r in self.records):
            atomic_write_text(self.ctx.run_dir / HEALED_PRESET,
                              "# The config this run ended with after train.heal applied: "
                              + "; ".join(f"{r['fix']} at env step {r['alarm_step']}" for r in self.records if r["fix"])
                              + "\n# (start a new run from it: marl-stability train -c healed.yaml)\n" + dump_yaml(self.ctx.cfg))

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "healing": [dict(r) for r in self.records]}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "base": self.base, "ring": list(self.ring), "records": copy.deepcopy(self.records),
                "overrides": list(self.overrides), "since": self.since, "gave_up": self.gave_up,
                "healed_update": self.healed_update}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.base = state["base"]
        self.ring = list(state["ring"])
        self.records = copy.deepcopy(state["records"])
        self.overrides = list(state["overrides"])
        self.since, self.gave_up, self.healed_update = state["since"], bool(state["gave_up"]), state["healed_update"]
