"""The compact columnar file of a run's scalars (``scalars.npz``), written by the training loop next to its
TensorBoard event file, so that analysis never re-parses event files for runs that have it.

Format (numpy ``.npz``, no pickles; version :data:`FORMAT`): ``tags`` (str, one per series, as logged),
``offsets`` (int64, ``len(tags) + 1``: series ``i`` is ``steps[offsets[i]:offsets[i + 1]]``), ``steps``
(int64 env steps) and ``values`` (float32: the precision TensorBoard stores, so a series read from here is the
one read from the event files, value for value), ``meta`` (a JSON object: ``format``, ``source``
``"trainer"`` or ``"events"``, ``complete`` (false while the run is in progress or after a kill), and for a
cache of event files their ``fingerprint``). Series keep the order they were logged in, duplicates included.

Why compressed ``.npz``: numpy is already a dependency, and on a per-update calibration run (110k values,
6.0 MB of event files) the file is 228 KB (1/27) and every series is read in 32 ms instead of 2.6 s (x81,
``docs/architecture.md`` has the measurement); Parquet or Arrow would add a large dependency for no gain at
this size.
"""

from __future__ import annotations

import io
import json
import zipfile
from array import array
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from marl_stability.atomic import atomic_write_bytes

SCALAR_FILE = "scalars.npz"  # the training loop's file
FORMAT = 1


class ScalarColumns:
    """Appendable scalar series in compact arrays (12 bytes a value), in logging order per tag."""

    def __init__(self) -> None:
        self.steps: dict[str, array] = {}
        self.values: dict[str, array] = {}

    def append(self, tag: str, step: int, value: float) -> None:
        steps = self.steps.get(tag)
        if steps is None:
            steps = self.steps[tag] = array("q")
            self.values[tag] = array("f")
        steps.append(int(step))
        self.values[tag].append(float(value))

    def truncate_after(self, step: int) -> None:
        """Drop every value logged at an env step after ``step`` (what a killed run wrote after its checkpoint)."""
        for tag in list(self.steps):
            s = np.frombuffer(self.steps[tag], dtype=np.int64)
            keep = np.flatnonzero(s <= step)
            if keep.size == s.size:
                continue
            v = np.frombuffer(self.values[tag], dtype=np.float32)
            self.steps[tag], self.values[tag] = array("q", s[keep].tobytes()), array("f", v[keep].tobytes())
            if not keep.size:
                del self.steps[tag], self.values[tag]

    def arrays(self) -> dict[str, np.ndarray]:
        tags = list(self.steps)
        lengths = [len(self.steps[t]) for t in tags]
        return {
            "tags": np.array(tags, dtype=str),
            "offsets": np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
            "steps": np.concatenate([np.frombuffer(self.steps[t], np.int64) for t in tags]) if tags else np.zeros(0, np.int64),
            "values": np.concatenate([np.frombuffer(self.values[t], np.float32) for t in tags]) if tags else np.zeros(0, np.float32),
        }

    @classmethod
    def from_arrays(cls, data: Mapping[str, np.ndarray]) -> "ScalarColumns":
        out = cls()
        offsets, steps, values = data["offsets"], data["steps"], data["values"]
        for i, tag in enumerate(data["tags"].tolist()):
            a, b = int(offsets[i]), int(offsets[i + 1])
            out.steps[tag] = array("q", steps[a:b].astype(np.int64).tobytes())
            out.values[tag] = array("f", values[a:b].astype(np.float32).tobytes())
        return out


def write_scalar_file(path: Path, columns: ScalarColumns, **meta: Any) -> None:
    """Atomically write ``columns`` with ``meta`` (``format`` added)."""
    arrays = columns.arrays()
    meta_json = json.dumps({"format": FORMAT, **meta}, sort_keys=True)

    def write(f: Any) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(meta_json), **arrays)
        f.write(buf.getvalue())

    atomic_write_bytes(Path(path), write)


class SeriesView(Mapping[str, list[tuple[int, float]]]):
    """``{tag: [(step, value), ...]}`` over the file's arrays: a tag's list is built when first asked for."""

    def __init__(self, tags: list[str], offsets: np.ndarray, steps: np.ndarray, values: np.ndarray) -> None:
        self._index = {t: i for i, t in enumerate(tags)}
        self._offsets, self._steps, self._values = offsets, steps, values
        self._built: dict[str, list[tuple[int, float]]] = {}

    def __getitem__(self, tag: str) -> list[tuple[int, float]]:
        series = self._built.get(tag)
        if series is None:
            i = self._index[tag]
            a, b = int(self._offsets[i]), int(self._offsets[i + 1])
            series = self._built[tag] = list(zip(self._steps[a:b].tolist(),
                                                 self._values[a:b].astype(np.float64).tolist()))
        return series

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def _load(path: Path) -> Optional[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """(arrays, meta) of a scalar file of this format whose arrays agree with each other; None otherwise."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                return None
            arrays = {k: data[k] for k in ("tags", "offsets", "steps", "values")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    tags, offsets, steps = arrays["tags"], arrays["offsets"], arrays["steps"]
    if len(offsets) != len(tags) + 1 or int(offsets[-1]) != len(steps) or len(steps) != len(arrays["values"]):
        return None
    return arrays, meta


def read_scalar_file(path: Path) -> Optional[tuple[SeriesView, dict[str, Any]]]:
    """(series, meta) of a scalar file; None when it is missing, unreadable or of another format."""
    loaded = _load(path)
    if loaded is None:
        return None
    a, meta = loaded
    return SeriesView(a["tags"].tolist(), a["offsets"], a["steps"], a["values"]), meta


def read_columns(path: Path) -> Optional[ScalarColumns]:
    """The file as appendable columns (a resumed run continues it); None when missing or unreadable."""
    loaded = _load(path)
    return None if loaded is None else ScalarColumns.from_arrays(loaded[0])
