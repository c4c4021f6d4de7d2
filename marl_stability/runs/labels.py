"""The collapse rule a finished run's final evaluation is labelled with (calibration, cross-task verdicts)."""

from __future__ import annotations

from typing import Any

SAME_ACTION_THRESHOLD = 0.9  # share of pairs of different states given the same action


def is_collapsed(stats: dict[str, Any], det: dict[str, Any]) -> bool:
    """One agent's final action statistics against the detector thresholds ``det`` (the run's config): repeated,
    saturated, insensitive to its input, and the same action across states."""
    return (stats["repeat_rate"] >= det["repeat_threshold"] and stats["saturation"] >= det["saturation_threshold"]
            and stats["sensitivity"] <= det["sensitivity_threshold"]
            and stats["batch_same_action"] >= SAME_ACTION_THRESHOLD)
