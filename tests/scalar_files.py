"""Checks of a run's columnar scalar file (``scalars.npz``) shared by the resume tests of every algorithm."""

from __future__ import annotations

from pathlib import Path

from marl_stability.core.scalar_file import SCALAR_FILE, read_scalar_file
from marl_stability.runs.scalars import read_event_columns

TIMING_PREFIXES = ("perf/",)  # wall-clock values: differ between two runs of one config


def series_of_file(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    read = read_scalar_file(Path(run_dir) / SCALAR_FILE)
    assert read is not None, f"{run_dir}: no readable {SCALAR_FILE}"
    view, meta = read
    assert meta["source"] == "trainer" and meta["complete"] is True
    return {tag: view[tag] for tag in view}


def series_of_events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    arrays = read_event_columns(Path(run_dir)).arrays()
    tags, offsets = arrays["tags"].tolist(), arrays["offsets"]
    return {t: list(zip(arrays["steps"][offsets[i]:offsets[i + 1]].tolist(),
                        arrays["values"][offsets[i]:offsets[i + 1]].astype(float).tolist())) for i, t in enumerate(tags)}


def _nan_safe(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, object]]]:
    return {t: [(s, "nan" if v != v else v) for s, v in pts] for t, pts in series.items()}


def assert_scalar_file_exact(run_dir: Path, reference: Path | None = None) -> None:
    """The run's scalar file holds exactly what its event files hold (tags, order, steps and float32 values,
    a resumed run's orphaned events purged), and, given a reference run of the same config, the same series as
    the reference's file (timing tags aside)."""
    own = _nan_safe(series_of_file(run_dir))
    assert list(own) == list(_nan_safe(series_of_events(run_dir))) and own == _nan_safe(series_of_events(run_dir))
    if reference is not None:
        ref = _nan_safe(series_of_file(reference))

        def keep(d: dict) -> dict:
            return {t: v for t, v in d.items() if not t.startswith(TIMING_PREFIXES)}

        assert keep(own) == keep(ref)
