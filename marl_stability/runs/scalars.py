"""A finished run's scalar series, for every tool that analyses runs: from the columnar ``scalars.npz`` the
training loop writes, else from the TensorBoard event files (runs of versions before 0.2.0, runs still in
progress), which are parsed once and cached next to them (``.scalars_cache.npz``, keyed by the event files'
names, sizes and modification times; a folder that cannot be written to is simply not cached). Tags renamed
since 0.1.0 are mapped to today's names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from marl_stability.core.scalar_file import (SCALAR_FILE, ScalarColumns, SeriesView, read_scalar_file,
                                             write_scalar_file)
from marl_stability.tags import current_tag

Scalars = Mapping[str, list[tuple[int, float]]]
CACHE_FILE = ".scalars_cache.npz"
EVENT_PREFIX = "events.out.tfevents."


def event_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).iterdir() if p.name.startswith(EVENT_PREFIX) and p.is_file())


def fingerprint(run_dir: Path) -> list[list[object]]:
    """Name, size and modification time (ns) of each event file: a cache is valid while these are unchanged."""
    return [[p.name, st.st_size, st.st_mtime_ns] for p in event_files(run_dir) for st in [p.stat()]]


def read_event_columns(run_dir: Path) -> ScalarColumns:
    """Every scalar in the event files (TensorBoard's reader: a resumed run's orphaned events purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 1, "tensors": 1,
                                                        "images": 1, "audio": 1, "compressedHistograms": 1})
    acc.Reload()
    cols = ScalarColumns()
    for tag in acc.Tags()["scalars"]:
        for e in acc.Scalars(tag):
            cols.append(tag, e.step, e.value)
    return cols


def _renamed(series: Scalars) -> dict[str, list[tuple[int, float]]] | Scalars:
    if all(current_tag(t) == t for t in series):
        return series
    return {current_tag(t): series[t] for t in series}


def read_scalars(run_dir: Path, cache: bool = True) -> Scalars:
    """``{tag: [(step, value), ...]}`` of every scalar the run logged (today's tag names)."""
    run_dir = Path(run_dir)
    own = read_scalar_file(run_dir / SCALAR_FILE)
    if own is not None and own[1].get("complete"):
        return _renamed(own[0])
    fp = fingerprint(run_dir)
    cached = read_scalar_file(run_dir / CACHE_FILE) if cache else None
    if cached is not None and cached[1].get("fingerprint") == fp:
        return _renamed(cached[0])
    cols = read_event_columns(run_dir)
    if cache and fp:
        try:
            write_scalar_file(run_dir / CACHE_FILE, cols, source="events", complete=True, fingerprint=fp)
        except OSError:
            pass  # a read-only folder: the event files are read again next time
    arrays = cols.arrays()
    return _renamed(SeriesView(arrays["tags"].tolist(), arrays["offsets"], arrays["steps"], arrays["values"]))
