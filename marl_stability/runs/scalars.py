"""A finished run's scalar series, read from its TensorBoard event files (tags renamed since 0.1.0 mapped to
today's names), for every tool that analyses runs."""

from __future__ import annotations

from pathlib import Path

from marl_stability.tags import current_tag


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar in the event files under ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {current_tag(tag): [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
