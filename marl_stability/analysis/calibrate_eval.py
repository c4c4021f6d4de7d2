"""Threshold choice on the calibration seeds and scores on the held-out seeds (``marl-stability calibrate``).

Everything here works on ``LabelledRun``s, so a report re-renders from ``records.json`` without the runs.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from marl_stability.runs.labelled import ANY_DETECTOR, DETECTORS, LabelledRun
from marl_stability.runs.signals import SIGNALS, Trace

MAX_CANDIDATES = 400  # thresholds tried per signal (quantiles of the distinct values beyond this)


@dataclass
class Score:
    """How a signal (at one threshold) or a detector did on one set of runs."""

    n_failing: int = 0
    n_healthy: int = 0
    alarmed_failing: int = 0
    alarmed_healthy: int = 0
    leads: list[int] = field(default_factory=list)  # onset - alarm step of each alarmed failing run

    @property
    def precision(self) -> Optional[float]:
        alarmed = self.alarmed_failing + self.alarmed_healthy
        return self.alarmed_failing / alarmed if alarmed else None

    @property
    def recall(self) -> Optional[float]:
        return self.alarmed_failing / self.n_failing if self.n_failing else None

    @property
    def false_alarm_rate(self) -> Optional[float]:
        return self.alarmed_healthy / self.n_healthy if self.n_healthy else None

    @property
    def median_lead(self) -> Optional[float]:
        return float(statistics.median(self.leads)) if self.leads else None

    def to_json(self) -> dict[str, object]:
        return {"n_failing": self.n_failing, "n_healthy": self.n_healthy, "alarmed_failing": self.alarmed_failing,
                "alarmed_healthy": self.alarmed_healthy, "precision": self.precision, "recall": self.recall,
                "false_alarms": self.alarmed_healthy, "false_alarm_rate": self.false_alarm_rate,
                "median_lead": self.median_lead, "leads": self.leads}


def score(cases: list[tuple[LabelledRun, Optional[int]]]) -> Score:
    """Score (run, alarm step or None) pairs: recall over failing runs, false alarms over healthy ones."""
    s = Score()
    for run, alarm in cases:
        if run.failing:
            s.n_failing += 1
            if alarm is not None:
                s.alarmed_failing += 1
                s.leads.append(int(run.onset if run.onset is not None else alarm) - int(alarm))
        else:
            s.n_healthy += 1
            s.alarmed_healthy += alarm is not None
    return s


@dataclass
class Row:
    """One line of the report: a signal with its chosen threshold, or an existing detector."""

    name: str
    kind: str  # "signal" or "detector"
    direction: str = "up"
    threshold: Optional[float] = None
    flagged: bool = False  # no threshold had zero false alarms on the calibration seeds
    note: str = ""  # why a row is n/a
    calibration: Optional[Score] = None
    held_out: Optional[Score] = None

    def sort_key(self) -> tuple[float, float, float, str]:
        """Held-out recall (high first), then false alarms (few first), then median lead (long first); n/a last."""
        h = self.held_out
        if h is None or h.recall is None:
            return (1.0, math.inf, math.inf, self.name)
        lead = h.median_lead
        return (-h.recall, h.alarmed_healthy, -lead if lead is not None else math.inf, self.name)


# ---------------------------------------------------------------------------------------------- threshold choice
def _up(trace: Trace) -> np.ndarray:
    sign = 1.0 if trace.direction == "up" else -1.0
    return sign * np.asarray(trace.values, np.float64)


def candidates(traces: list[Trace], healthy: list[bool], cap: int = MAX_CANDIDATES) -> np.ndarray:
    """Thresholds to try, in "up" units (values negated for a "down" signal): the distinct values of the
    calibration runs' running extremes (every value at which some run's alarm step changes, so no other
    threshold gives a different outcome). Over ``cap``: ``cap`` evenly spaced quantiles of them, plus each
    run's extreme and the first value beyond each healthy run's extreme (where the false-alarm count changes)."""
    ups = [_up(t) for t in traces]
    finite = [u[np.isfinite(u)] for u in ups]
    values = np.unique(np.concatenate(finite)) if finite else np.zeros(0)
    if len(values) <= cap:
        return values
    picks = [values[np.unique(np.linspace(0, len(values) - 1, cap).round().astype(int))]]
    for f, is_healthy in zip(finite, healthy):
        if len(f):
            picks.append(f[-1:])
            nxt = int(np.searchsorted(values, f[-1], side="right"))
            if is_healthy and nxt < len(values):
                picks.append(values[nxt:nxt + 1])
    return np.unique(np.concatenate(picks))


def _alarm_matrix(traces: list[Trace], cands: np.ndarray) -> np.ndarray:
    """[runs, candidates] first alarm step at each threshold (NaN: no alarm)."""
    out = np.full((len(traces), len(cands)), np.nan)
    for i, t in enumerate(traces):
        if not t.steps:
            continue
        idx = np.searchsorted(_up(t), cands, side="left")
        hit = idx < len(t.steps)
        out[i, hit] = np.asarray(t.steps, np.float64)[idx[hit]]
    return out


def _margin(traces: list[Trace], chosen: float) -> float:
    """The middle of the gap below ``chosen`` (in "up" units): every θ between the largest value any calibration
    run takes below ``chosen`` and ``chosen`` itself alarms the same runs at the same steps, so the middle keeps the
    calibration outcome and leaves the widest margin to unseen runs on both sides. Geometric middle when both ends
    are positive (gradient norms and ratios span decades), arithmetic otherwise; ``chosen`` when nothing lies below."""
    ups = [_up(t) for t in traces]
    values = np.concatenate([u[np.isfinite(u)] for u in ups]) if ups else np.zeros(0)
    below = values[values < chosen]
    if not len(below):
        return chosen
    low = float(below.max())
    return math.sqrt(low * chosen) if low > 0 else (low + chosen) / 2


def choose(runs: list[LabelledRun], name: str, direction: str) -> Row:
    """The threshold of signal ``name`` on the calibration runs: most failing runs alarmed with zero false alarms
    on healthy runs; ties -> longer median lead, then the more conservative threshold. With no zero-false-alarm
    threshold: fewest false alarms, then most failing runs alarmed (the row is flagged)."""
    row = Row(name, "signal", direction)
    avail = [r for r in runs if r.signals.get(name) is not None]
    failing = [r for r in avail if r.failing]
    if not failing or len(failing) == len(avail):
        what = "failing" if not failing else "healthy"
        row.note = f"no {what} calibration run logs it" if avail else "no calibration run logs it"
        return row
    traces = [t for r in avail if (t := r.signals[name]) is not None]
    cands = candidates(traces, [not r.failing for r in avail])
    if not len(cands):
        row.note = "no defined value in the calibration runs"
        return row
    alarms = _alarm_matrix(traces, cands)
    is_failing = np.array([r.failing for r in avail])
    onsets = np.array([r.onset if r.onset is not None else np.nan for r in avail], np.float64)
    hit = ~np.isnan(alarms)
    recall = hit[is_failing].sum(axis=0)
    false_alarms = hit[~is_failing].sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns without an alarmed failing run
        lead = np.nanmedian(onsets[is_failing, None] - alarms[is_failing], axis=0)
    lead = np.where(np.isnan(lead), -np.inf, lead)
    best = np.lexsort((-cands, -lead, -recall, false_alarms))[0]  # last key sorts first
    sign = 1.0 if direction == "up" else -1.0
    row.threshold = float(sign * _margin(traces, float(cands[best])))
    row.flagged = bool(false_alarms[best] > 0)
    row.calibration = evaluate(avail, name, row.threshold)
    return row


def evaluate(runs: list[LabelledRun], name: str, threshold: float) -> Score:
    """Score signal ``name`` at ``threshold`` over the runs that log it."""
    return score([(r, t.alarm_step(threshold)) for r in runs if (t := r.signals.get(name)) is not None])


def detector_score(runs: list[LabelledRun], name: str) -> Score:
    """Score an existing detector as it fired during training, over the runs that fed it."""
    return score([(r, r.detectors[name]) for r in runs if name in r.detectors])


def signal_rows(calibration: list[LabelledRun], held_out: list[LabelledRun]) -> list[Row]:
    """Every registry signal: its threshold from the calibration runs and its score on the held-out runs."""
    rows = []
    for s in SIGNALS:
        row = choose(calibration, s.name, s.direction)
        if row.threshold is not None:
            row.held_out = evaluate(held_out, s.name, row.threshold)
            if row.held_out.n_failing + row.held_out.n_healthy == 0:
                row.note = "no held-out run logs it"
        rows.append(row)
    return sorted(rows, key=Row.sort_key)


def detector_rows(calibration: list[LabelledRun], held_out: list[LabelledRun]) -> list[Row]:
    rows = [Row(name, "detector", calibration=detector_score(calibration, name), held_out=detector_score(held_out, name))
            for name in (*DETECTORS, ANY_DETECTOR)]
    return sorted(rows, key=Row.sort_key)
