"""A finished run's label from its evaluations (never from the detectors): healthy, collapsed, diverged or
degraded, its kind, the onset of the failure, and the collapse rule the final evaluation is judged by
(calibration, cross-task verdicts, fix evidence, doctor). Definitions: the docstring of
:mod:`marl_stability.analysis.calibrate`."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import numpy as np

from marl_stability.core.returns import SMOOTH_EVALS, drop_from_best, smoothed
from marl_stability.core.summary import RunSummary

Scalars = Mapping[str, list[tuple[int, float]]]
LABELS = ("healthy", "collapsed", "diverged", "degraded")
FAILING = ("collapsed", "diverged", "degraded")
# Kinds: collapsed -> saturated | unsaturated (the agents' final saturation); degraded -> below_do_nothing (the final
# return is no better than the task's do-nothing policy) | dropped (a sustained drop from the run's own best).
EVAL_STATS = ("repeat_rate", "saturation", "sensitivity", "batch_same_action")  # eval/<stat>/<agent>

SAME_ACTION_THRESHOLD = 0.9  # share of pairs of different states given the same action


# "dropped": the median of the last SMOOTH_EVALS evaluations is below the best such median (complete windows) of the run by more than
# DROP_Z times the run's evaluation noise (robust std of one evaluation: 1.4826 x median |R_t - R_t-1| / sqrt 2).
# DROP_Z: above every healthy run's drop on the design seeds (the largest: 1.3, calibration_saturation fixed arm,
# seeds 0-9; docs/detectors.md, "Degraded runs").
DROP_Z = 2.5


def is_collapsed(stats: dict[str, Any], det: dict[str, Any]) -> bool:
    """One agent's final action statistics against the detector thresholds ``det`` (the run's config): repeated,
    insensitive to its input, and the same action across states — saturated or not (a tanh output scaled to the
    bounds can stop responding without saturating); :func:`collapse_kind` tells which."""
    return (stats["repeat_rate"] >= det["repeat_threshold"] and stats["sensitivity"] <= det["sensitivity_threshold"]
            and stats["batch_same_action"] >= SAME_ACTION_THRESHOLD)


def collapse_kind(stats: list[dict[str, Any]], det: dict[str, Any]) -> str:
    """``saturated`` when every collapsed agent's actions sit at a bound, else ``unsaturated``."""
    return "saturated" if stats and all(s["saturation"] >= det["saturation_threshold"] for s in stats) else "unsaturated"


class Label(NamedTuple):
    label: str  # healthy | collapsed | diverged | degraded
    onset: Optional[int]  # env step the failure began (None for healthy runs)
    note: str  # how the onset was found ("" when the definition applied as written)
    agents: list[str]  # collapsed agents
    kind: str = ""  # collapsed: saturated | unsaturated; degraded: below_do_nothing | dropped


def degradation(history: list[tuple[int, float]], do_nothing: Optional[float], drop_z: float = DROP_Z,
                judge_drop: bool = True) -> Optional[tuple[str, int]]:
    """(kind, onset) when the run is degraded, else None. ``below_do_nothing``: the final trailing median is no better
    than the task's do-nothing return; onset: the first evaluation from which every trailing median stays at or below
    it. ``dropped``: the final trailing median lies more than ``drop_z`` x the run's evaluation noise below its best;
    onset: the first evaluation after the best from which every trailing median stays below best - margin."""
    if not history:
        return None
    # with fewer than SMOOTH_EVALS evaluations the trailing median takes those there are: a short run that ends
    # below doing nothing is not called healthy (a drop needs complete windows: drop_from_best)
    steps, returns = [s for s, _ in history], [r for _, r in history]
    m = smoothed(returns)
    if do_nothing is not None and m[-1] <= do_nothing:
        return "below_do_nothing", _stays_from(steps, m <= do_nothing)
    if not judge_drop:
        return None
    drop, noise = drop_from_best(returns)
    if drop > drop_z * noise:
        best_at = SMOOTH_EVALS - 1 + int(np.argmax(m[SMOOTH_EVALS - 1:]))  # complete windows only
        below = m < m[best_at] - drop_z * noise
        below[: best_at + 1] = False
        return "dropped", _stays_from(steps, below)
    return None


def _stays_from(steps: list[int], flags: np.ndarray) -> int:
    """The first step from which ``flags`` holds at every later evaluation (the last one's step at least)."""
    i = len(flags) - 1
    while i > 0 and flags[i - 1]:
        i -= 1
    return steps[i]


def detector_thresholds(config: dict[str, Any]) -> dict[str, Any]:
    """The run's ``detectors:`` section over the defaults (older runs lack newer keys)."""
    from marl_stability.config import DetectorConfig

    own = config.get("detectors")
    return {**DetectorConfig().model_dump(), **(own if isinstance(own, dict) else {})}


def _eval_table(scalars: Scalars, agent: str) -> tuple[list[int], dict[str, dict[int, float]]]:
    """Steps at which the agent's evaluation logged every needed stat, and stat -> {step: value}."""
    table = {k: dict(scalars.get(f"eval/{k}/{agent}", [])) for k in EVAL_STATS}
    needed = [k for k in EVAL_STATS if k != "batch_same_action" or table[k]]
    steps = sorted(set.intersection(*(set(table[k]) for k in needed))) if all(table[k] for k in needed) else []
    return steps, table


def collapse_onset(scalars: Scalars, agent: str, det: dict[str, Any]) -> tuple[Optional[int], str]:
    """First evaluation step from which the agent meets the end-state collapse criterion at every later
    evaluation, from its eval/ tags; (None, why) when the tags do not show it. Without eval/batch_same_action
    tags the detector's three thresholds alone decide (the note says so)."""
    steps, table = _eval_table(scalars, agent)
    if not steps:
        return None, f"{agent}: no evaluation tags"
    same = bool(table["batch_same_action"])
    onset: Optional[int] = None
    for st in reversed(steps):
        stats = {k: table[k].get(st, SAME_ACTION_THRESHOLD) for k in EVAL_STATS}  # absent same-action: passes
        if not is_collapsed(stats, det):
            break
        onset = st
    if onset is None:
        return None, f"{agent}: last logged evaluation not collapsed"
    return onset, "" if same else "onset from the detector thresholds alone (no eval/batch_same_action tags)"


def label_run(summary: RunSummary, config: dict[str, Any], scalars: Scalars,
              do_nothing: Optional[float] = None, judge_drop: bool = True) -> Label:
    """(label, onset step, onset note, collapsed agents, kind) of one run; ``do_nothing``: the task's do-nothing
    team return (None: not judged against it); ``judge_drop``: apply the drop rule (not for a task whose team
    return mixes two opposing teams). Definitions in ``marl_stability.analysis.calibrate``."""
    det = detector_thresholds(config)
    final_stats = {a: st.model_dump() for a, st in summary.action_stats.items()}
    collapsed = [a for a, st in final_stats.items() if is_collapsed(st, det)]
    if summary.status == "diverged" or summary.nonfinite_step is not None:
        if summary.nonfinite_step is not None:
            return Label("diverged", summary.nonfinite_step, "", collapsed)
        return Label("diverged", summary.env_steps, "no non-finite step recorded: onset = the run's last env step", collapsed)
    if collapsed:
        return _collapsed(summary, scalars, det, collapsed, collapse_kind([final_stats[a] for a in collapsed], det))
    degraded = degradation(summary.returns(), do_nothing, judge_drop=judge_drop)
    if degraded is not None:
        return Label("degraded", degraded[1], "", [], degraded[0])
    return Label("healthy", None, "", [])


def _collapsed(summary: RunSummary, scalars: Scalars, det: dict[str, Any], collapsed: list[str], kind: str) -> Label:
    onsets, notes = [], []
    for agent in collapsed:
        step, note = collapse_onset(scalars, agent, det)
        if step is not None:
            onsets.append(step)
        if note:
            notes.append(note)
    if onsets:
        return Label("collapsed", min(onsets), "; ".join(sorted(set(notes))), collapsed, kind)
    final = summary.eval_history[-1].env_steps if summary.eval_history else summary.env_steps
    return Label("collapsed", final, "; ".join(notes) + ": onset = the final evaluation", collapsed, kind)
