"""Where metrics go. Everything flows through ``Logger.record`` / ``histogram`` / ``text`` to sinks.

TensorBoard is one sink; ``MemorySink`` keeps everything in memory for tests and for users' notebooks.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np


class Sink(Protocol):
    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def histogram(self, tag: str, values: np.ndarray, step: int) -> None: ...
    def text(self, tag: str, text: str, step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class MemorySink:
    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.histograms: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
        self.texts: dict[str, list[tuple[int, str]]] = defaultdict(list)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars[tag].append((step, float(value)))

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        self.histograms[tag].append((step, np.asarray(values).copy()))

    def text(self, tag: str, text: str, step: int) -> None:
        self.texts[tag].append((step, text))

    def last(self, tag: str) -> float:
        return self.scalars[tag][-1][1]

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class TensorBoardSink:
    """TensorBoard event files. ``purge_step`` hides events a killed run wrote after its last checkpoint.

    With ``writer=`` it writes through a user's ``SummaryWriter`` (or anything with ``add_scalar`` /
    ``add_histogram``) and never closes it: the user owns it.
    """

    def __init__(self, logdir: str | Path | None = None, purge_step: int | None = None, writer: Any = None) -> None:
        self._owns = writer is None
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(logdir), purge_step=purge_step, flush_secs=30)
        self.writer = writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def scalar_batch(self, values: dict[str, float], step: int) -> None:
        """Many scalars of one step in one event: ~5 us per value instead of ~70 us through add_scalar."""
        file_writer = getattr(self.writer, "file_writer", None) if self._owns else None
        if file_writer is None:  # a user's writer: only its public API
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        file_writer.add_summary(summary, step)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        # TensorBoard rejects non-finite histogram input; the scalars already show them.
        values = np.asarray(values, np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size:
            self.writer.add_histogram(tag, values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if hasattr(self.writer, "add_text"):
            self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], metrics: Iterable[tuple[str, str]], varying: Iterable[str] = ()) -> None:
        """HParams plugin entry in this run's own event file (add_hparams would create a sub-run); values
        keep their types (``bool`` stays a boolean, see :mod:`marl_stability.core.tb_run`)."""
        from marl_stability.core.tb_run import hparams_summaries

        for s in hparams_summaries(hparams, metrics, varying):
            self.writer.file_writer.add_summary(s)

    def custom_scalars(self, layout: dict[str, dict[str, list[Any]]]) -> None:
        """TensorBoard's Custom Scalars dashboard: {category: {chart: ["Multiline", [tag regexes]]}}."""
        self.writer.add_custom_scalars(layout)

    def flush(self) -> None:
        if hasattr(self.writer, "flush"):
            self.writer.flush()

    def close(self) -> None:
        if self._owns:
            self.writer.close()
        else:
            self.flush()


class ScalarFileSink:
    """The run's columnar scalar file (:mod:`marl_stability.core.scalar_file`): written at every flush (the loop
    flushes before each checkpoint) and at close (``complete``). A resumed run continues the file from its
    checkpoint step (what a killed run wrote later is dropped, as TensorBoard's purge hides it); a resumed run
    that has no file (begun by a version before 0.2.0) writes none, and readers fall back to its event files."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        from marl_stability.core.scalar_file import SCALAR_FILE, ScalarColumns, read_columns

        self.path = Path(run_dir) / SCALAR_FILE
        self.columns: ScalarColumns | None = ScalarColumns()
        if resume_step is not None:
            self.columns = read_columns(self.path)
            if self.columns is not None:
                self.columns.truncate_after(resume_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.columns is not None:
            self.columns.append(tag, step, value)

    def scalar_batch(self, values: dict[str, float], step: int) -> None:
        if self.columns is not None:
            append = self.columns.append
            for tag, value in values.items():
                append(tag, step, value)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        return None

    def text(self, tag: str, text: str, step: int) -> None:
        return None

    def _write(self, complete: bool) -> None:
        from marl_stability.core.scalar_file import write_scalar_file

        if self.columns is not None:
            write_scalar_file(self.path, self.columns, source="trainer", complete=complete)

    def flush(self) -> None:
        self._write(complete=False)

    def close(self) -> None:
        self._write(complete=True)
        self.columns = None


class Logger:
    """Fans metrics out to every sink."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    def record(self, tag: str, value: float, step: int) -> None:
        for s in self.sinks:
            s.scalar(tag, float(value), step)

    def record_dict(self, values: dict[str, float], step: int) -> None:
        for s in self.sinks:
            if hasattr(s, "scalar_batch"):
                s.scalar_batch(values, step)
            else:
                for tag, value in values.items():
                    s.scalar(tag, float(value), step)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        for s in self.sinks:
            s.histogram(tag, values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        for s in self.sinks:
            s.text(tag, text, step)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()
