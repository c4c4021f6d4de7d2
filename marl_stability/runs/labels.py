"""A finished run's label from its evaluations (never from the detectors): healthy, collapsed or diverged, the
onset of the failure, and the collapse rule the final evaluation is judged by (calibration, cross-task verdicts,
fix evidence, doctor). Definitions: the docstring of :mod:`marl_stability.analysis.calibrate`."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

from marl_stability.core.summary import RunSummary

Scalars = Mapping[str, list[tuple[int, float]]]
LABELS = ("healthy", "collapsed", "diverged")
EVAL_STATS = ("repeat_rate", "saturation", "sensitivity", "batch_same_action")  # eval/<stat>/<agent>

SAME_ACTION_THRESHOLD = 0.9  # share of pairs of different states given the same action


def is_collapsed(stats: dict[str, Any], det: dict[str, Any]) -> bool:
    """One agent's final action statistics against the detector thresholds ``det`` (the run's config): repeated,
    saturated, insensitive to its input, and the same action across states."""
    return (stats["repeat_rate"] >= det["repeat_threshold"] and stats["saturation"] >= det["saturation_threshold"]
            and stats["sensitivity"] <= det["sensitivity_threshold"]
            and stats["batch_same_action"] >= SAME_ACTION_THRESHOLD)


class Label(NamedTuple):
    label: str  # healthy | collapsed | diverged
    onset: Optional[int]  # env step the failure began (None for healthy runs)
    note: str  # how the onset was found ("" when the definition applied as written)
    agents: list[str]  # collapsed agents


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


def label_run(summary: RunSummary, config: dict[str, Any], scalars: Scalars) -> Label:
    """(label, onset step, onset note, collapsed agents) of one run; definitions in ``marl_stability.analysis.calibrate``."""
    det = detector_thresholds(config)
    collapsed = [a for a, st in summary.action_stats.items() if is_collapsed(st.model_dump(), det)]
    if summary.status == "diverged" or summary.nonfinite_step is not None:
        if summary.nonfinite_step is not None:
            return Label("diverged", summary.nonfinite_step, "", collapsed)
        return Label("diverged", summary.env_steps, "no non-finite step recorded: onset = the run's last env step", collapsed)
    if not collapsed:
        return Label("healthy", None, "", [])
    onsets, notes = [], []
    for agent in collapsed:
        step, note = collapse_onset(scalars, agent, det)
        if step is not None:
            onsets.append(step)
        if note:
            notes.append(note)
    if onsets:
        return Label("collapsed", min(onsets), "; ".join(sorted(set(notes))), collapsed)
    final = summary.eval_history[-1].env_steps if summary.eval_history else summary.env_steps
    return Label("collapsed", final, "; ".join(notes) + ": onset = the final evaluation", collapsed)
