"""``marl-stability reproduce``: the repeated-action failure and its fix, side by side, in one command.

It runs the sweep ``experiments/reproduce.yaml`` (two arms, ``failure`` and ``fixed``, each its own preset)
over several seeds with the ordinary sweep machinery (``marl_stability.studies.sweep``: local process pool or Ray,
resumable), then writes into the sweep directory ``DIR``::

    DIR/runs/<arm>/seed_<n>/     TensorBoard run per arm x seed (tensorboard --logdir DIR/runs)
    DIR/report.md                what ran, a table per arm, a plain-language verdict
    DIR/summary.json             {"arms": {"failure": {...}, "fixed": {...}}, "verdict": {...}, ...}
    DIR/figures/*.png            return, gradient norms, saturation/repeat rate, actions early vs late
    DIR/figures/episode_<arm>.gif and filmstrip.png   one greedy evaluation episode per arm at the end
    DIR/results.csv              one row per trial (the sweep report's table)

Everything is read back from the run directories, so ``marl-stability reproduce --report-only --out DIR``
rebuilds the same files.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from marl_stability.runs.anchors import (
    COMPETITIVE_TASKS,
    SPREAD_ANCHORS,
    TaskAnchors,
    task_anchors,
)
from marl_stability.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from marl_stability.config import DetectorConfig, resolve_preset
from marl_stability.core.summary import RunSummary
from marl_stability.core.tb_run import OUTLIER_NOTE, tensorboard_link
from marl_stability.runs.trials import first_agent
from marl_stability.errors import UserError
from marl_stability.fmt import fmt_number
from marl_stability.runs.record import RunRecord
from marl_stability.runs.scalars import Scalars
from marl_stability.runs.trials import Trials, collect, fix_engagement_section, write_csv
from marl_stability.core.rates import rate_text, wilson_interval
from marl_stability.studies.report import _mean, _save, bootstrap_ci
from marl_stability.studies.sweep import (
    FINAL_STATUSES,
    Plan,
    SeedChoice,
    load_ablation,
    make_plan,
    read_plan,
    run_sweep,
)

_DETECTORS = DetectorConfig()
DEFAULT_CONFIG = "reproduce"  # experiments/reproduce.yaml, found as a preset (from a source checkout or a wheel)
ARMS = ("failure", "fixed")
HEAL_ARM = "heal"  # optional third arm: the failure preset with train.heal on
# --quick: a few-minute smoke version. The failure still shows (it sets in within a few hundred updates
# after warm-up); the fixed arm has too few updates to learn much, and the report says so.
QUICK = {
    "train.steps": 40_000,
    "maddpg.warmup_steps": 10_000,
    "train.eval_every": 2_500,
    "train.eval_episodes": 5,
    "train.checkpoint_every": 20_000,
}
# Measured anchors (team return, `python -m marl_stability.runs.anchors`): simple_spread_v3's stored ones, or random and
# do-nothing measured for the reproduction's own task when it runs on another (anchors.task_anchors).
# A collapsed policy's eval return is noisy only through the random initial states: a 10-episode eval of a
# fixed policy has a standard error of about 23 / sqrt(10) ~ 7 team-return units. The change after collapse
# is the mean of the second half of the evaluations after onset minus the mean of the first half; "the return
# did not improve after collapse" means the 95% bootstrap CI of that change, averaged over the collapsed
# seeds, stays below this margin (a third of the ~29-unit gap between random and the fixed preset at 150k).
NO_GAIN_MARGIN = 10.0
# The collapse must also still hold at the end of training (no recovery): the final evaluation's rates.


# ---------------------------------------------------------------------------------------------- running
def run_reproduce(out: Path, seeds: "Optional[int | SeedChoice]" = None, quick: bool = False, workers: int = 1, backend: str = "local",
                  address: Optional[str] = None, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                  config: Optional[Path] = None, render: bool = True) -> dict[str, Any]:
    """Run (or continue) the failure-vs-fixed sweep in ``out`` and write its report; returns the summary."""
    config = resolve_preset(config if config is not None else DEFAULT_CONFIG) if not resume else None
    if overwrite and resume:
        raise UserError("--overwrite and --resume exclude each other")
    if overwrite and out.exists():
        if not out.is_dir() or not (out / "arms.json").is_file():
            raise UserError(f"--overwrite: {out} is not a sweep directory; not deleting it")
        # Only a failure-vs-fixed sweep may be wiped, so a typo cannot delete someone's ablation.
        plan = read_plan(out)
        if not set(ARMS) <= {a.name for a in plan.arms}:
            raise UserError(f"--overwrite: {out} holds the sweep {plan.name!r}, not a reproduction; not deleting it")
    choice = SeedChoice.of(seeds)
    if choice is not None and choice.count is not None and choice.count < 1:
        raise UserError("--seeds must be >= 1")
    if not resume:
        plan = make_plan(config, seeds, probe=False, extra=QUICK if quick else None)
        missing = [a for a in ARMS if a not in {x.name for x in plan.arms}]
        if missing:
            raise UserError(f"{config}: a reproduction needs arms named {' and '.join(ARMS)} (missing {', '.join(missing)})")
        if overwrite and out.exists():
            shutil.rmtree(out)
    run_sweep(None if resume else config, out, seeds=seeds, workers=workers, backend=backend, address=address,
              resume=resume, quiet=quiet, extra=None if resume else (QUICK if quick else None))
    return build_reproduction_report(out, render=render)


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class RunData:
    seed: int
    run_dir: Path
    summary: RunSummary
    scalars: Scalars
    histograms: dict[str, list[tuple[int, np.ndarray, np.ndarray]]]  # tag -> (step, bucket edges, counts)
    label: str = ""  # runs.labels: "healthy", "collapsed (saturated)", "degraded (below_do_nothing)", ...


def _load_runs(out: Path, trials: Trials) -> dict[str, list[RunData]]:
    runs: dict[str, list[RunData]] = {a.name: [] for a in trials.plan.arms}
    for row in trials.rows:
        if row["status"] not in FINAL_STATUSES:
            continue
        run = RunRecord(out / row["run_dir"])
        hists = {tag: [(h.step, h.edges, h.counts) for h in series]
                 for tag, series in run.histograms("hist/eval_actions/").items()}
        lab = run.label
        label = f"{lab.label} ({lab.kind})" if lab.kind else lab.label
        runs[row["arm"]].append(RunData(int(row["seed"]), run.dir, trials.summaries[row["run_dir"]], run.scalars, hists,
                                        label))
    return runs


def _combine(scalars: Scalars, prefix: str, how: str) -> list[tuple[int, float]]:
    """Per-agent series ``<prefix>/<agent>`` -> one series (max or mean over agents at each step)."""
    by_step: dict[int, list[float]] = {}
    for tag, series in scalars.items():
        if tag.startswith(prefix + "/") and "/" not in tag[len(prefix) + 1:]:
            for step, v in series:
                by_step.setdefault(step, []).append(v)
    f = np.nanmax if how == "max" else np.nanmean
    return [(s, float(f(v))) for s, v in sorted(by_step.items())]


SERIES = {
    "team_return": lambda r: r.summary.returns(),
    "critic_grad": lambda r: _combine(r.scalars, "grad_norm/critic", "max"),
    "actor_grad": lambda r: _combine(r.scalars, "grad_norm/actor", "max"),
    "saturation": lambda r: _combine(r.scalars, "eval/saturation", "mean"),
    "repeat_rate": lambda r: _combine(r.scalars, "eval/repeat_rate", "mean"),
    "sensitivity": lambda r: _combine(r.scalars, "eval/sensitivity", "mean"),
    "preact_max_abs": lambda r: _combine(r.scalars, "eval/preact_max_abs", "max"),
}


def _band(series: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Median, min and max across seeds at each logged step (steps are the same schedule in every seed)."""
    by_step: dict[int, list[float]] = {}
    for s in series:
        for step, v in s:
            if math.isfinite(v):
                by_step.setdefault(step, []).append(v)
    steps = np.array(sorted(by_step), dtype=float)
    vals = [np.asarray(by_step[int(s)]) for s in steps]
    return (steps, np.array([np.median(v) for v in vals]), np.array([v.min() for v in vals]),
            np.array([v.max() for v in vals]))


# ---------------------------------------------------------------------------------------------- statistics
def _fired(steps: list[Optional[int]]) -> int:
    """Seeds where a detector fired (a step recorded)."""
    return sum(s is not None for s in steps)


@dataclass
class ArmResult:
    name: str
    preset: str
    seeds: list[int]
    runs: list[str]
    final_returns: list[float]
    final_return_mean: float
    final_return_ci: tuple[float, float]
    collapse_steps: list[Optional[int]]
    explosion_steps: list[Optional[int]]
    peak_critic_grad: list[float]
    peak_actor_grad: list[float]
    repeat: list[float]
    saturation: list[float]
    sensitivity: list[float]
    nonfinite_steps: list[Optional[int]] = field(default_factory=list)  # the run diverged (non-finite values)
    entropy_collapse_steps: list[Optional[int]] = field(default_factory=list)  # on-policy detectors
    kl_spike_steps: list[Optional[int]] = field(default_factory=list)
    post_collapse_gain: list[Optional[float]] = field(default_factory=list)
    still_collapsed: list[bool] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # each run's label (runs.labels), with its kind
    heals: list[list[dict[str, Any]]] = field(default_factory=list)  # per seed: summary.json "healing" (train.heal)

    @property
    def healed(self) -> list[list[dict[str, Any]]]:
        """Per seed, the heals that applied a fix."""
        return [[h for h in hs if h.get("fix")] for hs in self.heals]

    @property
    def failing_labels(self) -> int:
        """Runs whose label is not healthy (collapsed, diverged, or degraded: below doing nothing, or dropped)."""
        return sum(not lab.startswith("healthy") for lab in self.labels)

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def collapses(self) -> int:
        return _fired(self.collapse_steps)

    @property
    def explosions(self) -> int:
        return _fired(self.explosion_steps)

    @property
    def diverged(self) -> int:
        return _fired(self.nonfinite_steps)

    @property
    def failure_steps(self) -> list[Optional[int]]:
        """Per seed, the first env step at which a failure detector fired: action collapse, non-finite values
        (divergence) or an entropy collapse; None for a seed where none did."""
        return [min((x for x in xs if x is not None), default=None)
                for xs in zip(self.collapse_steps, self.nonfinite_steps, self.entropy_collapse_steps)]

    @property
    def failures(self) -> int:
        return _fired(self.failure_steps)

    @property
    def extended(self) -> bool:
        """Whether a detector beyond the action collapse fired in this arm (the report then shows them all)."""
        return _fired(self.nonfinite_steps + self.entropy_collapse_steps + self.kl_spike_steps) > 0

    def rate(self, k: int) -> float:
        return k / self.n if self.n else math.nan


def _post_collapse(history: list[tuple[int, float]], onset: int) -> Optional[float]:
    """Mean of the second half of the evaluations from the collapse onset on minus the mean of the first half
    (the middle one is left out when their number is odd); None with fewer than two evaluations."""
    after = [v for s, v in history if s >= onset]
    if len(after) < 2:
        return None
    h = len(after) // 2
    return float(np.mean(after[-h:]) - np.mean(after[:h]))


def _f(v: Optional[float]) -> float:
    """A summary.json number as a float; NaN where it is missing."""
    return math.nan if v is None else float(v)


def arm_result(name: str, preset: str, runs: list[RunData], unfinished: list[str]) -> ArmResult:
    runs = sorted(runs, key=lambda r: r.seed)
    # A run that diverged stopped at its non-finite values: its last evaluation is not a final policy's.
    rets = [math.nan if r.summary.nonfinite_step is not None else _f(r.summary.final_return) for r in runs]
    finite = [x for x in rets if math.isfinite(x)]
    res = ArmResult(
        name=name, preset=preset, seeds=[r.seed for r in runs], runs=[str(r.run_dir) for r in runs],
        final_returns=rets, final_return_mean=float(np.mean(finite)) if finite else math.nan,
        final_return_ci=bootstrap_ci((finite,), _mean),
        collapse_steps=[r.summary.collapse_step for r in runs],
        explosion_steps=[r.summary.explosion_step for r in runs],
        peak_critic_grad=[_f(r.summary.grad_peak("critic")) for r in runs],
        peak_actor_grad=[_f(r.summary.grad_peak("actor")) for r in runs],
        repeat=[_f(r.summary.repeated_action_rate) for r in runs],
        saturation=[_f(r.summary.saturation_rate) for r in runs],
        sensitivity=[_f(r.summary.action_sensitivity) for r in runs],
        unfinished=unfinished,
        nonfinite_steps=[r.summary.nonfinite_step for r in runs],
        entropy_collapse_steps=[r.summary.entropy_collapse_step for r in runs],
        kl_spike_steps=[r.summary.kl_spike_step for r in runs],
        labels=[r.label for r in runs],
        heals=[list(r.summary.healing) for r in runs],
    )
    for r, onset, rep, sat in zip(runs, res.collapse_steps, res.repeat, res.saturation):
        res.post_collapse_gain.append(None if onset is None else _post_collapse(r.summary.returns(), int(onset)))
        # "still collapsed at the end": the collapse detector's repeat and saturation thresholds (defaults)
        res.still_collapsed.append(onset is not None and rep >= _DETECTORS.repeat_threshold
                                   and sat >= _DETECTORS.saturation_threshold)
    return res


def post_collapse_change(failure: ArmResult) -> tuple[float, tuple[float, float]]:
    """Mean over collapsed seeds of the return change after collapse, with its 95% bootstrap CI."""
    gains = [g for g in failure.post_collapse_gain if g is not None]
    if not gains:
        return math.nan, (math.nan, math.nan)
    if len(gains) == 1:
        return gains[0], (gains[0], gains[0])
    return float(np.mean(gains)), bootstrap_ci((gains,), _mean)


def heal_verdict(heal: ArmResult, failure: ArmResult, fixed: ArmResult) -> dict[str, Any]:
    """The failure + heal arm: healed when every run ends labelled healthy, none diverged, and a heal acted in every
    run whose failure arm failed (a run that never triggered was not healed, it was lucky)."""
    acted = sum(bool(h) for h in heal.healed)
    lost = [sum(int(h["env_steps_lost"]) for h in hs) for hs in heal.healed if hs]
    return {
        "healed": heal.n > 0 and heal.failing_labels == 0 and heal.diverged == 0 and acted >= failure.failures,
        "runs_healed": acted, "runs": heal.n, "healthy": heal.n - heal.failing_labels,
        "fixes": sorted({h["fix"] for hs in heal.healed for h in hs}),
        "env_steps_lost": lost,
        "final_return_vs_fixed": None if not (math.isfinite(heal.final_return_mean) and math.isfinite(fixed.final_return_mean))
        else heal.final_return_mean - fixed.final_return_mean,
        "criterion": "every run of the arm ends labelled healthy, none diverged, and heal acted in at least as many "
                     "runs as the failure arm failed",
    }


def verdict(failure: ArmResult, fixed: ArmResult, anchors: TaskAnchors = SPREAD_ANCHORS) -> dict[str, Any]:
    """Plain-language verdict with the acceptance criteria of the reproduction spelled out."""
    change, (_, change_hi) = post_collapse_change(failure)
    no_gain = math.isfinite(change_hi) and change_hi < NO_GAIN_MARGIN
    extended = failure.extended or fixed.extended
    if extended and not any(g is not None for g in failure.post_collapse_gain):
        no_gain = failure.failures > 0  # every failure ended the run or left no evaluations to compare
    failure_ok = failure.n > 0 and (failure.failures if extended else failure.collapses) >= math.ceil(0.9 * failure.n) \
        and no_gain
    lo = fixed.final_return_ci[0]
    fixed_ok = fixed.n > 0 and (fixed.failures if extended else fixed.collapses) == 0 and math.isfinite(lo) \
        and lo > anchors.random and fixed.failing_labels == 0
    criteria = {
        "failure": "a failure detector (action collapse, non-finite values, entropy collapse) fired in >= 90% "
                   "of seeds, and where the run went on after an action collapse, the return did not improve "
                   f"(as for the collapse alone: 95% bootstrap CI of the change below +{NO_GAIN_MARGIN:g})",
        "fixed": "no failure detector (action collapse, non-finite values, entropy collapse) fired in any seed, "
                 f"the 95% CI of the mean final team return is above random ({anchors.random:g}), and every run is "
                 "labelled healthy (none ends no better than doing nothing or dropped from its best)",
    } if extended else {
        "failure": f"collapse detector fired in >= 90% of seeds, and the return did not improve after collapse: "
                   f"the change from the first to the second half of the evaluations after onset, averaged over "
                   f"collapsed seeds, has a 95% bootstrap CI below +{NO_GAIN_MARGIN:g}",
        "fixed": f"no collapse in any seed, the 95% CI of the mean final team return above random "
                 f"({anchors.random:g}), and every run labelled healthy (none ends no better than doing nothing "
                 "or dropped from its best)",
    }
    return {
        "failure_reproduced": failure_ok,
        "post_collapse_return_change": None if not math.isfinite(change) else change,
        "fixed_cured": fixed_ok,
        "criteria": criteria,
    }


# ---------------------------------------------------------------------------------------------- figures
_COLORS = {"failure": "C3", "fixed": "C0", HEAL_ARM: "C2"}


def _color(arm: str, i: int) -> str:
    return _COLORS.get(arm, f"C{(i + 2) % 10}")


def _plot_bands(ax: Any, runs: dict[str, list[RunData]], key: str, log: bool = False) -> None:
    for i, (arm, rs) in enumerate(runs.items()):
        steps, med, lo, hi = _band([SERIES[key](r) for r in rs])
        if not steps.size:
            continue
        if log:
            floor = 1e-8  # a vanished gradient (exactly 0) is drawn at the floor of the log axis
            med, lo, hi = (np.maximum(x, floor) for x in (med, lo, hi))
        ax.plot(steps, med, color=_color(arm, i), label=f"{arm} (median, n={len(rs)})",
                marker="." if steps.size < 10 else None)
        ax.fill_between(steps, lo, hi, color=_color(arm, i), alpha=0.2, linewidth=0)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_xlabel("env steps")
    ax.xaxis.set_major_formatter(lambda x, _pos: f"{x / 1000:g}k" if x else "0")  # 25000 50000 ... overlapped


def make_figures(runs: dict[str, list[RunData]], results: dict[str, ArmResult], folder: Path,
                 warmup: dict[str, int], anchors: TaskAnchors = SPREAD_ANCHORS) -> list[str]:
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    _plot_bands(ax, runs, "team_return")
    ax.axhline(anchors.random, color="gray", linestyle=":", linewidth=1, label=f"random policy ({anchors.random:g})")
    if anchors.controller is not None:
        ax.axhline(anchors.controller, color="gray", linestyle="--", linewidth=1,
                   label=f"hand-coded optimal assignment ({anchors.controller:g})")
    for i, (arm, res) in enumerate(results.items()):
        onsets = [s for s in res.collapse_steps if s is not None]
        if onsets:
            ax.plot(onsets, [ax.get_ylim()[0]] * len(onsets), "|", color=_color(arm, i), markersize=14,
                    label=f"{arm}: collapse onsets ({len(onsets)}/{res.n})")
    _mark_heals(ax, results, label=True)
    ax.set_ylabel("eval team return (greedy episodes)")
    ax.set_title("team return: median across seeds, band = min..max")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, folder / "return.png")
    written.append("figures/return.png")

    fig = Figure(figsize=(11, 4))
    for j, (key, title) in enumerate((("critic_grad", "critic"), ("actor_grad", "actor"))):
        ax = fig.add_subplot(1, 2, j + 1)
        _plot_bands(ax, runs, key, log=True)
        _mark_heals(ax, results, label=j == 0)
        ax.set_title(f"{title} gradient norm before clipping (max over agents)")
        ax.set_ylabel("global L2 norm (log; 0 drawn at 1e-8)")
        ax.legend(fontsize=7)
    _save(fig, folder / "grad_norms.png")
    written.append("figures/grad_norms.png")

    fig = Figure(figsize=(11, 4))
    for j, (key, title) in enumerate((("saturation", "saturation: action components within 1% of a bound"),
                                      ("repeat_rate", "repeated-action rate: consecutive actions unchanged"))):
        ax = fig.add_subplot(1, 2, j + 1)
        _plot_bands(ax, runs, key)
        ax.set_ylim(-0.03, 1.03)
        ax.axhline(0.9, color="gray", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("fraction (eval, mean over agents)")
        ax.legend(fontsize=7)
    _save(fig, folder / "saturation_repeat.png")
    written.append("figures/saturation_repeat.png")

    hist_fig = _action_histograms(runs, warmup)
    if hist_fig is not None:
        _save(hist_fig, folder / "actions_early_late.png")
        written.append("figures/actions_early_late.png")
    return written


def _mark_heals(ax: Any, results: dict[str, ArmResult], label: bool) -> None:
    """Each heal of the heal arm: a dotted line at its alarm and a solid one at the snapshot it rolled back to."""
    res = results.get(HEAL_ARM)
    heals = [h for hs in (res.healed if res is not None else []) for h in hs]
    for k, h in enumerate(heals):
        ax.axvline(h["alarm_step"], color=_COLORS[HEAL_ARM], linestyle=":", linewidth=1, alpha=0.8,
                   label=f"heal alarms ({len(heals)})" if label and k == 0 else None)
        ax.axvline(h["rolled_back_to"], color=_COLORS[HEAL_ARM], linestyle="-", linewidth=0.8, alpha=0.5,
                   label="rolled back to" if label and k == 0 else None)


def _pooled_histogram(rs: list[RunData], pick: str, warmup: int) -> Optional[tuple[int, np.ndarray, np.ndarray]]:
    """Fractions of every agent's action components on a common grid over [0, 1] (TensorBoard buckets re-binned
    by their upper edge) at the last evaluation before learning starts ("init": the initial policy), the first
    one after ("early"), or the last one ("late")."""
    edges = np.linspace(0.0, 1.0, 41)
    total = np.zeros(len(edges) - 1)
    step_used = None
    for r in rs:
        for tag, events in r.histograms.items():
            ev = ([e for e in events if e[0] <= warmup][-1:] if pick == "init" else
                  [e for e in events if e[0] > warmup][:1] if pick == "early" else events[-1:])
            if not ev:
                continue
            step, limits, counts = ev[0]
            step_used = step if step_used is None else (min(step_used, step) if pick == "early" else max(step_used, step))
            # A bucket's right edge places it; values outside [0, 1] (never applied) go to the end bins.
            idx = np.clip(np.searchsorted(edges, np.clip(limits, 0.0, 1.0), side="left") - 1, 0, len(edges) - 2)
            np.add.at(total, idx, counts)
    if step_used is None or total.sum() == 0:
        return None
    return step_used, edges, total / total.sum()


def _action_histograms(runs: dict[str, list[RunData]], warmup: dict[str, int]) -> Any:
    from matplotlib.figure import Figure

    panels = [(arm, rs) for arm, rs in runs.items() if rs]
    if not panels:
        return None
    fig = Figure(figsize=(5.5 * len(panels), 3.8))
    for j, (arm, rs) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), j + 1)
        for pick, color in (("init", "0.5"), ("early", "C2"), ("late", "C3" if arm == "failure" else "C0")):
            h = _pooled_histogram(rs, pick, warmup.get(arm, 0))
            if h is None:
                continue
            step, edges, frac = h
            label = {"init": "before learning", "early": "first eval after learning starts", "late": "final eval"}[pick]
            ax.stairs(frac, edges, label=f"{label} ({step} steps)", linewidth=1.8 if pick != "init" else 1.2,
                      color=color, linestyle="--" if pick == "init" else "-")
        ax.set_xlabel("applied action component (all agents, dims and seeds)")
        ax.set_ylabel("fraction")
        ax.set_title(f"{arm}: applied actions, early vs late")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------------- episodes
def load_policy(run_dir: Path) -> tuple[Any, Any]:
    """(config, algorithm) of a finished run, restored from its last checkpoint."""
    from marl_stability.config import RunConfig
    from marl_stability.core.build import build_run
    from marl_stability.core.checkpoint import load_checkpoint, policy_checkpoint
    from marl_stability.core.live import healed_config

    path = policy_checkpoint(run_dir)
    if path is None:
        raise UserError(f"{run_dir} has no checkpoint to render from")
    state = load_checkpoint(path)
    cfg = healed_config(RunConfig.model_validate(state["config"]), list(state.get("healed", [])))  # as it ended
    parts = build_run(cfg, probe=False)  # the same construction as the trainer's
    parts.close()
    parts.algorithm.load_state_dict(state["algo"])
    return cfg, parts.algorithm


def render_episode(run_dir: Path, seed: int = 12345) -> tuple[list[np.ndarray], float]:
    """Frames (rgb arrays) of one greedy episode of a trained run on mpe2 itself, and its team return."""
    from marl_stability.envs.wrappers import make_wrapped

    cfg, algo = load_policy(run_dir)
    spec = algo.spec
    env = make_wrapped(cfg.env.id, {**cfg.env.kwargs, "render_mode": "rgb_array"}, obs_scale=cfg.env.obs_scale,
                       obs_offset=cfg.env.obs_offset)
    try:
        obs, _ = env.reset(seed=seed)
        frames = [np.asarray(env.render())]
        team = 0.0
        while env.agents:
            batch = np.zeros((1, spec.num_agents, spec.max_obs_dim), np.float32)
            for i, a in enumerate(spec.agents):
                batch[0, i, : spec.obs_dims[i]] = obs[a]
            acts = algo.act(batch, explore=False)[0]
            low, high = np.asarray(spec.act_low, np.float32), np.asarray(spec.act_high, np.float32)
            step = {}
            for i, a in enumerate(spec.agents):
                d = spec.act_dims[i]
                step[a] = (int(np.argmax(acts[i, :d])) if spec.discrete[i]
                           else np.clip(acts[i, :d], low[i, :d], high[i, :d]).astype(np.float32))
            obs, rew, _, _, _ = env.step(step)
            team += float(sum(rew.values()))
            frames.append(np.asarray(env.render()))
        return frames, team
    finally:
        env.close()


def write_episode_media(results: dict[str, ArmResult], folder: Path) -> tuple[list[str], dict[str, Any]]:
    """episode_<arm>.gif per arm and one filmstrip.png (rows: arms; columns: time), from each arm's first seed."""
    from matplotlib.figure import Figure
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    written, info, strips = [], {}, {}
    for arm, res in results.items():
        if not res.runs:
            continue
        run_dir = Path(res.runs[0])
        if res.nonfinite_steps and res.nonfinite_steps[0] is not None:
            # A diverged run's last parameters are non-finite: there is no policy left to show.
            info[arm] = {"run": str(run_dir), "seed": res.seeds[0], "team_return": None,
                         "skipped": f"the run diverged at env step {res.nonfinite_steps[0]} (non-finite values)"}
            continue
        frames, team = render_episode(run_dir)
        small = [Image.fromarray(f).resize((f.shape[1] // 2, f.shape[0] // 2)) for f in frames]
        path = folder / f"episode_{arm}.gif"

        def write(fh: Any, imgs: list[Any] = small) -> None:
            imgs[0].save(fh, format="GIF", save_all=True, append_images=imgs[1:], duration=160, loop=0)

        atomic_write_bytes(path, write)
        written.append(f"figures/episode_{arm}.gif")
        info[arm] = {"run": str(run_dir), "seed": res.seeds[0], "team_return": team, "frames": len(frames)}
        strips[arm] = frames
    if strips:
        cols = 6
        fig = Figure(figsize=(2.2 * cols, 2.3 * len(strips)))
        for r, (arm, frames) in enumerate(strips.items()):
            picks = np.linspace(0, len(frames) - 1, cols).round().astype(int)
            for c, t in enumerate(picks):
                ax = fig.add_subplot(len(strips), cols, r * cols + c + 1)
                ax.imshow(frames[t])
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"{arm}\nreturn {info[arm]['team_return']:.1f}", fontsize=9)
                if r == 0:
                    ax.set_title(f"t = {t}", fontsize=9)
        fig.suptitle("one greedy evaluation episode at the end of training (agents: circles; landmarks: dots)",
                     fontsize=9)
        _save(fig, folder / "filmstrip.png")
        written.append("figures/filmstrip.png")
    return written, info


# ---------------------------------------------------------------------------------------------- report
def _range(xs: list[float], spec: str = ".3g") -> str:
    f = [x for x in xs if math.isfinite(x)]
    if not f:
        return "n/a"
    return f"{format(min(f), spec)} .. {format(max(f), spec)}" if len(f) > 1 else format(f[0], spec)


def _steps(xs: list[Optional[int]]) -> str:
    fired = sorted(int(s) for s in xs if s is not None)
    if not fired:
        return "never"
    return f"{int(np.median(fired))} (median; {fired[0]} .. {fired[-1]})" if len(fired) > 1 else str(fired[0])


def render_markdown(res: dict[str, ArmResult], v: dict[str, Any], plan: Plan, budget: dict[str, int], quick: bool,
                    figures: list[str], episodes: dict[str, Any], notes: list[str], tb_dir: str,
                    anchors: TaskAnchors = SPREAD_ANCHORS, engagement: Optional[list[str]] = None) -> str:
    lines = ["# Reproduction: the repeated-action failure and its fix", ""]
    if quick:
        lines += ["**Quick smoke version** (`--quick`): short budget, shorter warm-up, 5 evaluation episodes. The "
                  "failure shows; the fixed arm has too few updates to learn much. Run without `--quick` for the "
                  "calibrated result.", ""]
    lines += ["## What ran", ""]
    lines += [_what_ran(arm, plan.arm(arm.name).config, budget[arm.name]) for arm in res.values()]
    lines += _results_section(res, plan.arm("failure").config["train"]["eval_episodes"])
    lines += _verdict_section(res["failure"], res["fixed"], v, anchors)
    if HEAL_ARM in res and "heal" in v:
        lines += _heal_verdict_lines(res[HEAL_ARM], res["fixed"], v["heal"])
    lines += [f"- {n}" for n in notes]
    lines += engagement or []
    lines += _figures_section(figures, episodes, tb_dir)
    return "\n".join(lines)


def _heal_verdict_lines(heal: ArmResult, fixed: ArmResult, h: dict[str, Any]) -> list[str]:
    lo, hi = heal.final_return_ci
    lost = h["env_steps_lost"]
    return [f"- **Failure + heal: {'healed' if h['healed'] else 'NOT healed'}.** Heal acted in {h['runs_healed']}/"
            f"{h['runs']} runs (fixes applied: {', '.join(h['fixes']) or 'none'}; env steps lost per healed run: "
            f"{_range([float(x) for x in lost], '.0f') if lost else 'none'}, counted in the budget); "
            f"{h['healthy']}/{h['runs']} end labelled healthy; final team return "
            f"{fmt_number(heal.final_return_mean, '.1f')} [{fmt_number(lo, '.1f')}, {fmt_number(hi, '.1f')}] against the "
            f"fixed preset's {fmt_number(fixed.final_return_mean, '.1f')}. Criterion: {h['criterion']}."]


def _what_ran(arm: ArmResult, cfg: dict[str, Any], budget: int) -> str:
    """One bullet: an arm's preset, budget, seeds and the settings that make it fail or not."""
    fx = cfg["fixes"]
    return (
        f"- **{arm.name}** (`{arm.preset}`): {cfg['env']['id']}, {budget:,} env steps, seeds "
        f"{', '.join(map(str, arm.seeds)) or 'none finished'}; actor output `{cfg['actor']['output']}`, last-layer "
        f"init {cfg['actor']['last_layer_init'] or 'PyTorch default'}, {_optimizers(cfg)}, reward x{cfg['env']['reward_scale']:g}, reward transform "
        f"`{fx['reward']['mode']}`, obs norm {'on' if fx['obs_norm']['enabled'] else 'off'}, gradient clip "
        f"actor `{fx['grad_clip']['actor']['mode']}` / critic `{fx['grad_clip']['critic']['mode']}`"
        + (f" (max {fx['grad_clip']['critic']['max']:g})" if fx['grad_clip']['critic']['mode'] != 'none' else "")
        + ("; **train.heal on** (docs/heal.md)" if (cfg["train"].get("heal") or {}).get("enabled") else "") + ".")


def _nanmean(xs: list[float], n: int) -> float:
    return float(np.nanmean(xs)) if n else math.nan


def _results_section(res: dict[str, ArmResult], episodes_per_eval: int) -> list[str]:
    """The per-arm table and the per-seed numbers."""
    lines = ["", "## Results", "",
             f"Final team return: the last evaluation ({episodes_per_eval} greedy episodes), mean over seeds with a "
             "95% percentile bootstrap CI. Detector columns: seeds where it fired [95% Wilson interval of the rate], and the env step it fired at. "
             "Action columns: the final evaluation, mean over seeds (sensitivity = standardized ‖∂a/∂obs‖; "
             "0 = the action ignores the observation).", ""]
    if any(a.extended for a in res.values()):
        lines += ["Failure detectors (a diverged run stopped at its non-finite values and has no final policy: its final "
                  "team return is left out):", ""] + _failure_table(res)
    lines += ["| arm | seeds | final team return | collapse | collapse onset | explosion | peak critic grad norm | "
             "final repeat rate | final saturation | final sensitivity |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for a in res.values():
        lo, hi = a.final_return_ci
        lines.append(
            f"| {a.name} | {a.n} | {fmt_number(a.final_return_mean, '.1f')} [{fmt_number(lo, '.1f')}, "
            f"{fmt_number(hi, '.1f')}] | {rate_text(a.collapses, a.n)} | "
            f"{_steps(a.collapse_steps)} | {rate_text(a.explosions, a.n)} | {_range(a.peak_critic_grad)} | "
            f"{fmt_number(_nanmean(a.repeat, a.n), '.2f')} | "
            f"{fmt_number(_nanmean(a.saturation, a.n), '.2f')} | "
            f"{fmt_number(_nanmean(a.sensitivity, a.n), '.3g')} |")
    lines += ["", "Per seed (final team return / collapse onset / peak critic grad norm / peak actor grad norm / label: "
              "healthy, collapsed, diverged, or degraded — no better than doing nothing, or dropped from its best):", ""]
    for a in res.values():
        labels = a.labels or [""] * a.n
        per = "; ".join(f"s{s}: {fmt_number(r, '.1f')} / {c if c is not None else '-'} / {fmt_number(g, '.3g')} / "
                        f"{fmt_number(ag, '.3g')} / {lab or '?'}"
                        for s, r, c, g, ag, lab in zip(a.seeds, a.final_returns, a.collapse_steps, a.peak_critic_grad,
                                                       a.peak_actor_grad, labels))
        lines.append(f"- {a.name}: {per or 'none'}; not healthy: {rate_text(a.failing_labels, a.n)}")
    heal = res.get(HEAL_ARM)
    if heal is not None and heal.n:
        lines += ["", "Heals (`train.heal`) per seed of the heal arm: trigger at env step -> snapshot rolled back to, "
                  "road, fix applied, env steps lost, outcome:", ""]
        for seed, hs in zip(heal.seeds, heal.heals):
            text = "; ".join(f"{h['trigger'].replace('_', ' ')} at {h['alarm_step']} -> {h.get('rolled_back_to', '-')}, "
                             f"{h['road']}, {h['fix'] or 'no fix'}, {h.get('env_steps_lost', 0)} lost, {h['outcome']}"
                             for h in hs)
            lines.append(f"- s{seed}: {text or 'no trigger fired'}")
    return lines


def _optimizers(cfg: dict[str, Any]) -> str:
    """``Adam lr 0.001/0.01`` (actor/critic), or each optimizer named when they differ (it was always "Adam")."""
    a, c = cfg["actor_optim"], cfg["critic_optim"]
    names = {"adam": "Adam", "sgd": "SGD", "rmsprop": "RMSprop"}
    mom = lambda o: f" momentum {o['momentum']:g}" if o["name"] != "adam" and o.get("momentum") else ""  # noqa: E731
    if a["name"] == c["name"] and mom(a) == mom(c):
        return f"{names.get(a['name'], a['name'])}{mom(a)} lr {a['lr']:g}/{c['lr']:g}"
    return (f"actor {names.get(a['name'], a['name'])}{mom(a)} lr {a['lr']:g}, critic {names.get(c['name'], c['name'])}"
            f"{mom(c)} lr {c['lr']:g}")


def _failure_table(res: dict[str, ArmResult]) -> list[str]:
    """Every detector's count and first step per arm (shown when one beyond the action collapse fired)."""
    lines = ["| arm | any failure | first failure | diverged (non-finite) | entropy collapse | KL spike (warning) |",
             "|---|---|---|---|---|---|"]
    for a in res.values():
        def n(xs: list[Optional[int]]) -> str:
            return f"{_fired(xs)}/{a.n}" + (f" ({_steps(xs)})" if _fired(xs) else "")
        lines.append(f"| {a.name} | {rate_text(a.failures, a.n)} | {_steps(a.failure_steps)} | {n(a.nonfinite_steps)} | "
                     f"{n(a.entropy_collapse_steps)} | {n(a.kl_spike_steps)} |")
    return lines + [""]


def _extended_failure_line(failure: ArmResult, v: dict[str, Any]) -> str:
    return (f"- **Failure preset: {'reproduced' if v['failure_reproduced'] else 'NOT reproduced'}.** A failure detector "
            f"fired in {failure.failures}/{failure.n} seeds, first at {_steps(failure.failure_steps)} env steps: "
            f"non-finite values (the run diverged) in {failure.diverged}/{failure.n}, action collapse in "
            f"{failure.collapses}/{failure.n}, entropy collapse in {_fired(failure.entropy_collapse_steps)}/{failure.n}; the "
            f"KL-spike warning in {_fired(failure.kl_spike_steps)}/{failure.n}, at {_steps(failure.kl_spike_steps)}. Peak "
            f"gradient norms before the end: critic {_range(failure.peak_critic_grad)}, actor "
            f"{_range(failure.peak_actor_grad)}.")


def _verdict_section(failure: ArmResult, fixed: ArmResult, v: dict[str, Any], anchors: TaskAnchors) -> list[str]:
    """The verdict on each arm, in words, with the criteria it was judged by."""
    if failure.extended or fixed.extended:
        return _extended_verdict_section(failure, fixed, v, anchors)
    gains = [g for g in failure.post_collapse_gain if g is not None]
    change, change_ci = post_collapse_change(failure)
    lines = ["", "## Verdict", ""]
    if failure.n:
        lines.append(
            f"- **Failure preset: {'reproduced' if v['failure_reproduced'] else 'NOT reproduced'}.** The collapse "
            f"detector (repeated AND saturated AND input-insensitive actions for 3 consecutive evaluations) fired in "
            f"{failure.collapses}/{failure.n} seeds, first at {_steps(failure.collapse_steps)} env steps; "
            f"{sum(failure.still_collapsed)}/{failure.collapses} collapsed seeds "
            f"were still collapsed at the end. Return change from the first to the second half of the evaluations "
            f"after onset: {fmt_number(change, '+.1f')} [{fmt_number(change_ci[0], '+.1f')}, "
            f"{fmt_number(change_ci[1], '+.1f')}] on "
            f"average (per seed: {', '.join(f'{g:+.1f}' for g in gains) or 'n/a'}). The explosion detector fired in "
            f"{failure.explosions}/{failure.n}; the critic gradient "
            f"peaked at {_range(failure.peak_critic_grad)} and the actor gradient at "
            f"{_range(failure.peak_actor_grad)}.")
    if fixed.n:
        lo, hi = fixed.final_return_ci
        lines.append(
            f"- **Fixed preset: {'cured' if v['fixed_cured'] else 'NOT cured'}.** Collapse in {fixed.collapses}/"
            f"{fixed.n} seeds; final team return {fmt_number(fixed.final_return_mean, '.1f')} [{fmt_number(lo, '.1f')}, "
            f"{fmt_number(hi, '.1f')}] versus "
            f"random {anchors.random:g} and the failure arm's {fmt_number(failure.final_return_mean, '.1f')}. "
            + _labels_note(fixed) + _scale_note(anchors))
    lines += [f"- Criteria: failure — {v['criteria']['failure']}; fixed — {v['criteria']['fixed']}.",
              "- A collapsed policy's return does not always look bad: saturated components can cancel "
              f"(doing nothing scores {anchors.do_nothing:g} here). The actions, not the return, show the failure."]
    return lines + _competitive_note(anchors)


def _extended_verdict_section(failure: ArmResult, fixed: ArmResult, v: dict[str, Any], anchors: TaskAnchors) -> list[str]:
    lines = ["", "## Verdict", ""]
    if failure.n:
        lines.append(_extended_failure_line(failure, v))
    if fixed.n:
        lo, hi = fixed.final_return_ci
        lines.append(
            f"- **Fixed preset: {'cured' if v['fixed_cured'] else 'NOT cured'}.** A failure detector fired in "
            f"{fixed.failures}/{fixed.n} seeds (KL-spike warning in {_fired(fixed.kl_spike_steps)}/"
            f"{fixed.n}); final team return {fmt_number(fixed.final_return_mean, '.1f')} [{fmt_number(lo, '.1f')}, "
            f"{fmt_number(hi, '.1f')}] versus random {anchors.random:g}. " + _labels_note(fixed) + _scale_note(anchors))
    lines.append(f"- Criteria: failure — {v['criteria']['failure']}; fixed — {v['criteria']['fixed']}.")
    return lines + _competitive_note(anchors)


def _labels_note(arm: ArmResult) -> str:
    """The runs not labelled healthy (e.g. no better than doing nothing at the end), or nothing."""
    bad = [f"s{s}: {lab}" for s, lab in zip(arm.seeds, arm.labels) if not lab.startswith("healthy")]
    return f"Not labelled healthy: {rate_text(len(bad), arm.n)} ({', '.join(bad)}). " if bad else ""


def _competitive_note(anchors: TaskAnchors) -> list[str]:
    lines: list[str] = []
    if anchors.env in COMPETITIVE_TASKS:
        lines.append(f"- {anchors.env} is competitive: the team return sums both teams' rewards, so it does not measure "
                     "either team's learning; `python -m marl_stability.analysis.cross_task` reports each team's return.")
    return lines


def _scale_note(anchors: TaskAnchors) -> str:
    if anchors.controller is not None:
        return (f"For scale (measured here, `python -m marl_stability.runs.anchors`, 1000 episodes): doing nothing scores "
                f"{anchors.do_nothing:g}, a hand-coded optimal landmark assignment controller {anchors.controller:g}.")
    return f"For scale: doing nothing scores {anchors.do_nothing:g} ({anchors.source})."


def _figures_section(figures: list[str], episodes: dict[str, Any], tb_dir: str) -> list[str]:
    lines: list[str] = []
    if figures:
        lines += ["", "## Figures", ""]
        for f in figures:
            lines.append(f"![{Path(f).stem}]({f})")
            lines.append("")
    if episodes:
        lines += ["Episodes rendered from the first seed of each arm's final checkpoint (greedy, env seed 12345): "
                  + "; ".join(f"{arm}: not rendered, {e['skipped']}" if e.get("skipped") else
                              f"{arm}: team return {e['team_return']:.1f}" for arm, e in episodes.items()) + "."]
    lines += ["", f"TensorBoard: [this link]({tensorboard_link(first_agent(Path(tb_dir)))}) opens Time Series with one "
              "colour per arm and the story cards pinned, once `python -m tensorboard.main --logdir "
              f"{tb_dir}` runs (every arm x seed side by side, run names `<arm>/seed_<n>`; opened plainly, the first "
              "group, `Story`, holds the team return and each agent's repeat rate, saturation and critic gradient; the "
              "Custom Scalars tab has the gradient, critic, action and reward dashboards for the first agent). "
              + OUTLIER_NOTE, ""]
    return lines


def build_reproduction_report(out: str | Path, render: bool = True) -> dict[str, Any]:
    """(Re)build report.md, summary.json and figures/ of a reproduction sweep directory."""
    from marl_stability.config import flatten

    out = Path(out)
    trials = collect(out)
    plan = trials.plan
    missing = [a for a in ARMS if a not in {x.name for x in plan.arms}]
    if missing:
        raise UserError(f"{out} is not a reproduction (no arm {', '.join(missing)})")
    write_csv(trials, out / "results.csv")
    runs = _load_runs(out, trials)
    unfinished = {a.name: [f"{r['arm']}/seed_{r['seed']}" for r in trials.rows
                           if r["arm"] == a.name and r["status"] not in FINAL_STATUSES] for a in plan.arms}
    presets = {a.name: _preset_of(out, a.name) for a in plan.arms}
    names = [*ARMS, *([HEAL_ARM] if HEAL_ARM in runs else [])]
    results = {name: arm_result(name, presets[name], runs[name], unfinished[name]) for name in names}
    env = plan.arm("failure").config["env"]
    anchors = task_anchors(env["id"], env["kwargs"])
    v = verdict(results["failure"], results["fixed"], anchors)
    if HEAL_ARM in results:
        v["heal"] = heal_verdict(results[HEAL_ARM], results["failure"], results["fixed"])
    budget = {a.name: int(a.config["train"]["steps"]) for a in plan.arms}
    from marl_stability.agents import algorithm_class  # an arm without finished runs: its class says

    on_policy = {a.name: any(RunRecord(r.run_dir).on_policy for r in runs[a.name]) if runs.get(a.name)
                 else algorithm_class(a.config["algo"]).on_policy for a in plan.arms}
    warmup = {a.name: 0 if on_policy[a.name] else int(a.config["maddpg"]["warmup_steps"]) for a in plan.arms}
    quick = all(all(flatten(a.config).get(k) == val for k, val in QUICK.items()) for a in plan.arms)
    notes = []
    for name, u in unfinished.items():
        if u:
            notes.append(f"Not finished (left out): {', '.join(u)}.")
    figures: list[str] = []
    episodes: dict[str, Any] = {}
    try:
        figures = make_figures({k: runs[k] for k in names}, results, out / "figures", warmup, anchors)
        if render:
            media, episodes = write_episode_media(results, out / "figures")
            figures += media
    except ImportError as e:  # pragma: no cover - matplotlib/Pillow are dependencies
        notes.append(f"Figures skipped: {e}.")
    text = render_markdown(results, v, plan, budget, quick, figures, episodes, notes, str(out / "runs"), anchors,
                           fix_engagement_section(trials))
    atomic_write_text(out / "report.md", text)
    summary = {
        "format": 1,
        "env": plan.arms[0].config["env"]["id"],
        "quick": quick,
        "budget_env_steps": budget,
        "verdict": v,
        "anchors": anchors.to_dict(),
        "arms": {name: _arm_json(r, out) for name, r in results.items()},
        "episodes": episodes,
        "figures": figures,
    }
    atomic_write_json(out / "summary.json", summary)
    return {"summary": summary, "report": out / "report.md", "figures": [out / f for f in figures]}


def _preset_of(out: Path, arm: str) -> str:
    """The preset file an arm started from, as written in the saved ablation file (for the report)."""
    try:
        ab = load_ablation(out / "ablation.yaml")
    except UserError:
        return "?"
    return str(((ab.arms or {}).get(arm) or {}).get("config") or ab.base.config)


def _arm_json(r: ArmResult, out: Path) -> dict[str, Any]:
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    return {
        "preset": r.preset,
        "seeds": r.seeds,
        "collapse_rate": clean(r.rate(r.collapses)),
        "collapse_rate_ci": list(wilson_interval(r.collapses, r.n)) if r.n else None,
        "explosion_rate": clean(r.rate(r.explosions)),
        "explosion_rate_ci": list(wilson_interval(r.explosions, r.n)) if r.n else None,
        "collapse_steps": r.collapse_steps,
        "explosion_steps": r.explosion_steps,
        "nonfinite_steps": r.nonfinite_steps,
        "entropy_collapse_steps": r.entropy_collapse_steps,
        "kl_spike_steps": r.kl_spike_steps,
        "still_collapsed_at_end": r.still_collapsed,
        "labels": r.labels,
        "not_healthy": r.failing_labels,
        "post_collapse_return_change": r.post_collapse_gain,
        "final_return_mean": clean(r.final_return_mean),
        "final_return_ci": [clean(c) for c in r.final_return_ci],
        "final_returns": [clean(x) for x in r.final_returns],
        "peak_critic_grad_norm": [clean(x) for x in r.peak_critic_grad],
        "peak_actor_grad_norm": [clean(x) for x in r.peak_actor_grad],
        "final_repeated_action_rate": [clean(x) for x in r.repeat],
        "final_saturation_rate": [clean(x) for x in r.saturation],
        "final_action_sensitivity": [clean(x) for x in r.sensitivity],
        "runs": [str(Path(p).relative_to(out)) if Path(p).is_relative_to(out) else p for p in r.runs],
        **({"healing": r.heals} if any(r.heals) else {}),
        "unfinished": r.unfinished,
    }
