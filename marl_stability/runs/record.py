"""``RunRecord``: one owner for reading a finished (or running) run folder. Every analysis and study reads runs
through it: the resolved config, the summary, the scalars (the columnar file, else the event files, cached once),
histograms and text (event files), the run's label, and the discovery of run folders under a tree.

Each part is read when first asked for and kept, so a tool that needs the scalars three times parses nothing
twice. Tag names of older runs are mapped to today's (:mod:`marl_stability.tags`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from marl_stability.core.summary import RunSummary, read_summary
from marl_stability.errors import UserError
from marl_stability.runs.labels import Label, label_run
from marl_stability.runs.scalars import EVENT_PREFIX, Scalars, read_scalars
from marl_stability.tags import current_tag

USABLE_STATUSES = ("completed", "diverged")  # runs that ended on their own; others cannot be labelled
# Runs written before 0.2.0 do not record whether their algorithm is on-policy: these built-in ones were.
LEGACY_ON_POLICY = ("mappo", "ippo")


@dataclass(frozen=True)
class Histogram:
    step: int
    edges: np.ndarray  # right bucket limits, as TensorBoard stores them
    counts: np.ndarray


def _records(path: Path) -> Iterable[bytes]:
    """The records of one TFRecord file (8-byte length, its 4-byte CRC, the data, the data's 4-byte CRC), without
    checking the CRCs: TensorBoard's reader checks them in pure Python (without TensorFlow), 5 s of the 7 s a report
    spent on six runs' histograms. A truncated last record (a run killed mid-write) ends the file."""
    with open(path, "rb") as f:
        while len(header := f.read(12)) == 12:
            length = int.from_bytes(header[:8], "little")
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return
            yield data


def event_histograms(run_dir: Path) -> dict[str, list[Histogram]]:
    """Every histogram series of a run's event files (today's tag names), read as TensorBoard reads them: files in
    name order, and a session-start event (a resumed run's ``purge_step``) drops what was logged at or after its step
    before it. An undecodable record ends its file."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    out: dict[str, list[Histogram]] = {}
    for path in sorted(p for p in Path(run_dir).iterdir() if p.name.startswith(EVENT_PREFIX)):
        for data in _records(path):
            try:
                ev = Event.FromString(data)
            except DecodeError:
                break
            if ev.HasField("session_log") and ev.session_log.status == SessionLog.START:
                out = {tag: [h for h in series if h.step < ev.step] for tag, series in out.items()}
            for v in ev.summary.value:
                if v.HasField("histo"):
                    out.setdefault(current_tag(v.tag), []).append(
                        Histogram(int(ev.step), np.asarray(v.histo.bucket_limit), np.asarray(v.histo.bucket)))
    return {tag: series for tag, series in out.items() if series}


def read_config(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's resolved ``config.yaml`` as a dict (None when missing or unreadable)."""
    import yaml

    try:
        data = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


class RunRecord:
    """One run folder (``config.yaml``, ``summary.json``, ``scalars.npz`` and/or TensorBoard event files)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)

    def __repr__(self) -> str:
        return f"RunRecord({str(self.dir)!r})"

    @cached_property
    def config(self) -> Optional[dict[str, Any]]:
        """The resolved config as written next to the run (None when missing or unreadable)."""
        return read_config(self.dir)

    @cached_property
    def summary(self) -> Optional[RunSummary]:
        """The run's summary (None while running, after a crash before one was written, or when corrupt)."""
        return read_summary(self.dir / "summary.json") if (self.dir / "summary.json").is_file() else None

    @property
    def on_policy(self) -> bool:
        """Whether the run's algorithm learns on-policy (its summary says so; older runs: by built-in name)."""
        s = self.summary
        algo = s.algo if s is not None else (self.config or {}).get("algo")
        return bool(s is not None and s.on_policy) or algo in LEGACY_ON_POLICY

    @cached_property
    def scalars(self) -> Scalars:
        """``{tag: [(step, value), ...]}``, today's tag names."""
        return read_scalars(self.dir)

    def series(self, tag: str) -> list[tuple[int, float]]:
        return list(self.scalars.get(tag, []))

    def last_values(self, prefix: str) -> dict[str, float]:
        """``{tag without prefix: last value}`` of every scalar tag under ``prefix``."""
        return {tag[len(prefix):]: float(s[-1][1]) for tag, s in self.scalars.items() if tag.startswith(prefix) and s}

    def has_events(self) -> bool:
        return any(p.name.startswith(EVENT_PREFIX) for p in self.dir.iterdir())

    @cached_property
    def _events(self) -> Any:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(self.dir), size_guidance={"scalars": 1, "histograms": 0, "tensors": 0})
        acc.Reload()
        return acc

    def histograms(self, prefix: str = "") -> dict[str, list[Histogram]]:
        """Histogram series under ``prefix`` (today's names), from the event files (:func:`event_histograms`)."""
        return {tag: series for tag, series in self._histograms.items() if tag.startswith(prefix)}

    @cached_property
    def _histograms(self) -> dict[str, list[Histogram]]:
        return event_histograms(self.dir)

    def texts(self) -> dict[str, list[tuple[int, str]]]:
        """Text summaries (``{tag: [(step, markdown), ...]}``), from the event files."""
        acc, out = self._events, {}
        for tag in acc.Tags().get("tensors", []):
            if acc.SummaryMetadata(tag).plugin_data.plugin_name != "text":
                continue
            name = current_tag(tag[: -len("/text_summary")] if tag.endswith("/text_summary") else tag)
            out[name] = [(e.step, b"".join(e.tensor_proto.string_val).decode("utf-8", "replace"))
                         for e in acc.Tensors(tag)]
        return out

    # ------------------------------------------------------------------------------------------ labels
    def skip_reason(self) -> Optional[str]:
        """Why this run cannot be labelled (one line), or None."""
        if self.summary is None:
            return "no readable summary.json (still running, or crashed before writing one)"
        if self.summary.status not in USABLE_STATUSES:
            return f"status {self.summary.status!r} (only completed and diverged runs have a final outcome)"
        if self.config is None:
            return "unreadable config.yaml"
        if not self.has_events() and not (self.dir / "scalars.npz").is_file():
            return "no TensorBoard event file"
        return None

    @cached_property
    def label(self) -> Label:
        """The run's outcome from its evaluations (definitions in :mod:`marl_stability.analysis.calibrate`)."""
        if self.summary is None:
            raise UserError(f"{self.dir}: no readable summary.json")
        from marl_stability.runs.anchors import shared_team_return

        return label_run(self.summary, self.config or {}, self.scalars, self.do_nothing,
                         judge_drop=shared_team_return(self.config or {}))

    @cached_property
    def do_nothing(self) -> Optional[float]:
        """The do-nothing team return of the run's task (``runs.anchors``; None for competitive tasks)."""
        from marl_stability.runs.anchors import do_nothing_of

        return do_nothing_of(self.config or {})


# ---------------------------------------------------------------------------------------------- discovery
def _is_run_dir(files: Iterable[str]) -> bool:
    names = set(files)
    return "config.yaml" in names and ("summary.json" in names or any(n.startswith(EVENT_PREFIX) for n in names))


def find_run_dirs(dirs: Iterable[Path]) -> list[Path]:
    """Every run folder given or below the given folders (any depth), each once, in a stable order."""
    found: dict[Path, None] = {}
    for d in map(Path, dirs):
        if not d.exists():
            raise UserError(f"{d} does not exist")
        if not d.is_dir():
            raise UserError(f"{d} is not a directory")
        for root, subdirs, files in os.walk(d):
            subdirs.sort()
            if _is_run_dir(files):
                found.setdefault(Path(root).resolve(), None)
                subdirs[:] = []  # checkpoints/, forensics/ (which holds a config.yaml) are part of the run
    return list(found)


def find_runs(dirs: Iterable[Path]) -> list[RunRecord]:
    """A record for every run folder given or below the given folders."""
    return [RunRecord(d) for d in find_run_dirs(dirs)]
