"""Candidate early-warning signals for ``marl-stability calibrate``: one registry, the transforms, and each
run's trace (the record-breaking points of a signal in its alarm direction).

A signal reads the TensorBoard tags matching one glob (``*`` also matches ``/``), transforms each tag's series
on its own (level, growth over the run's own early level, log-slope over a trailing window, drop below the
early level, ...), then aggregates the tags at every logged step: the max over agents/networks for a signal
that alarms when it rises (``up``), the min for one that alarms when it falls (``down``; PPO's entropy). A
signal none of whose tags a run logged is "n/a" for that run (never zero).

The alarm step of a run at threshold θ is the first logged step where the signal reaches θ in its direction
(``>= θ`` up, ``<= θ`` down). That step only changes where the running maximum (minimum) of the series improves,
so a run's ``Trace`` keeps just those points: it answers "first step at θ" exactly for every θ, and is what
``records.json`` stores to re-render a report without the run directories.

Adding a signal is one ``Signal(...)`` line in ``SIGNALS`` (a transform is ``(series, partner, params) ->
series``; ``partner`` is a second tag matched per agent, e.g. the Monte-Carlo return beside the Q estimate).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from marl_stability.core.roads import Scalars, Series, learning_start, series_of  # noqa: F401 -- re-exported


@dataclass(frozen=True)
class SignalParams:
    """How the relative transforms find a run's own early level (stored with the records)."""

    baseline_updates: int = 20  # growth: median of the first K logged values (after learning starts)
    baseline_measurements: int = 3  # effective-rank drop: median of the first M plasticity measurements
    slope_window: int = 20  # log-slope: trailing window of W logged values

    def check(self) -> None:
        from marl_stability.errors import UserError

        for name in ("baseline_updates", "baseline_measurements"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.slope_window < 2:
            raise UserError(f"--slope-window must be >= 2, got {self.slope_window}")


Transform = Callable[[Series, Optional[Series], SignalParams], Series]


@dataclass(frozen=True)
class Signal:
    """One row of the registry: which tags, how each tag's series is transformed, which way it alarms."""

    name: str
    tags: tuple[str, ...]  # globs, tried in order: the first one any tag matches is used
    transform: Transform
    direction: str  # "up": alarm when >= θ (max over tags); "down": alarm when <= θ (min over tags)
    unit: str
    description: str
    partner: Optional[str] = None  # format string for a second tag per agent: "q/mc_return/{}"


# ---------------------------------------------------------------------------------------------- transforms
def _empty() -> Series:
    return np.zeros(0, np.int64), np.zeros(0, np.float64)


def level(s: Series, partner: Optional[Series], p: SignalParams) -> Series:
    """The logged value itself."""
    return s


def absolute(s: Series, partner: Optional[Series], p: SignalParams) -> Series:
    return s[0], np.abs(s[1])


def _early(values: np.ndarray, k: int) -> tuple[float, int]:
    """(median of the first k finite values, index of the k-th of them) or (nan, -1) with fewer than k."""
    finite = np.flatnonzero(np.isfinite(values))
    if len(finite) < k:
        return math.nan, -1
    return float(np.median(values[finite[:k]])), int(finite[k - 1])


def _ratio_to_early(s: Series, k: int) -> Series:
    """value / (median of the first k finite values), from the k-th value on (causal: no baseline before it)."""
    base, start = _early(s[1], k)
    if not base > 0:  # nan, zero or negative early level: the ratio means nothing
        return _empty()
    return s[0][start:], s[1][start:] / base


def growth(s: Series, partner: Optional[Series], p: SignalParams) -> Series:
    """Ratio to the run's own early level (median of its first ``baseline_updates`` logged values)."""
    return _ratio_to_early(s, p.baseline_updates)


def rank_drop(s: Series, partner: Optional[Series], p: SignalParams) -> Series:
    """1 - value / early value (median of the first ``baseline_measurements``): 0 = no drop, 1 = rank gone."""
    steps, ratio = _ratio_to_early(s, p.baseline_measurements)
    return steps, 1.0 - ratio


def log_slope(s: Series, partner: Optional[Series], p: SignalParams) -> Series:
    """Least-squares slope of ln(value) against env steps over the trailing ``slope_window`` logged values, in
    e-folds per 10k env steps (ln 10 = 2.3: a tenfold rise every 10k steps). Values that are not finite and
    positive are left out (the non-finite detector owns NaN/Inf); a window whose values all share one step
    (an on-policy update logs its minibatches at one env step) has no slope."""
    keep = np.isfinite(s[1]) & (s[1] > 0)
    x, y = s[0][keep].astype(np.float64) / 1e4, np.log(s[1][keep])
    w = p.slope_window
    if len(x) < w:
        return _empty()
    x = x - x[0]  # keeps the sums small: no cancellation in n*Sxx - Sx^2

    def window_sums(a: np.ndarray) -> np.ndarray:
        c = np.concatenate([[0.0], np.cumsum(a)])
        return c[w:] - c[:-w]

    sx, sy, sxx, sxy = window_sums(x), window_sums(y), window_sums(x * x), window_sums(x * y)
    steps = s[0][keep]
    spread = steps[w - 1:] != steps[: len(steps) - w + 1]  # sorted: the window's first and last step differ
    den = np.where(spread, w * sxx - sx * sx, 1.0)
    slope = np.where(spread & (den > 0), (w * sxy - sx * sy) / den, np.nan)
    return steps[w - 1:], slope


def drift_ratio(s: Series, partner: Optional[Series], p: SignalParams) -> Series:
    """|Q(s0) - MC return| / |MC return| at each evaluation (needs the partner MC-return series)."""
    if partner is None:
        return _empty()
    mc = dict(zip(partner[0].tolist(), partner[1].tolist()))
    pairs = [(st, v, mc[st]) for st, v in zip(s[0].tolist(), s[1].tolist()) if st in mc and mc[st] != 0]
    if not pairs:
        return _empty()
    steps, over, ret = (np.array(c) for c in zip(*pairs))
    return steps.astype(np.int64), np.abs(over.astype(np.float64)) / np.abs(ret.astype(np.float64))


# ---------------------------------------------------------------------------------------------- the registry
SIGNALS: tuple[Signal, ...] = (
    Signal("critic_grad_norm", ("grad_norm/critic/*",), level, "up", "norm",
           "pre-clip global gradient L2 norm of the critics (max over networks)"),
    Signal("actor_grad_norm", ("grad_norm/actor/*",), level, "up", "norm",
           "pre-clip global gradient L2 norm of the actors (max over networks)"),
    Signal("critic_grad_growth", ("grad_norm/critic/*",), growth, "up", "x early",
           "critic gradient norm / its median over the run's first K logged updates"),
    Signal("actor_grad_growth", ("grad_norm/actor/*",), growth, "up", "x early",
           "actor gradient norm / its median over the run's first K logged updates"),
    Signal("critic_grad_log_slope", ("grad_norm/critic/*",), log_slope, "up", "e-folds / 10k steps",
           "slope of ln(critic gradient norm) over the trailing W logged updates"),
    Signal("q_drift", ("q/overestimation/*",), absolute, "up", "learner reward units",
           "|Q(s0, mu(s0)) - discounted MC return| at evaluations (q/overestimation)"),
    Signal("q_drift_ratio", ("q/overestimation/*",), drift_ratio, "up", "x |MC return|",
           "|Q(s0) - MC return| / |MC return| at evaluations (scale-free)", partner="q/mc_return/{}"),
    Signal("actor_preact_growth", ("policy/preact_max_abs_batch/*",), growth, "up", "x early",
           "max |actor output pre-activation| on the update batch / its early median"),
    Signal("saturation", ("policy/saturation/*", "eval/saturation/*"), level, "up", "fraction",
           "share of action components at a bound (training-side tag if logged, else evaluation)"),
    Signal("repeat_rate", ("policy/repeat_rate/*", "eval/repeat_rate/*"), level, "up", "fraction",
           "share of consecutive steps with an unchanged action (training-side tag if logged, else evaluation)"),
    Signal("dormant_tau0", ("plasticity/dormant_tau0/*/all",), level, "up", "fraction",
           "share of dead hidden units (tau = 0) of a network (max over networks)"),
    Signal("dormant_tau0.1", ("plasticity/dormant_tau0.1/*/all",), level, "up", "fraction",
           "share of tau-dormant hidden units (tau = 0.1) of a network (max over networks)"),
    Signal("eff_rank_drop", ("plasticity/eff_rank/*",), rank_drop, "up", "fraction",
           "1 - effective rank of the penultimate features / its early value (max over networks)"),
    Signal("update_ratio", ("optim/update_ratio/*",), level, "up", "ratio",
           "||delta w|| / ||w|| of an optimizer step (max over networks)"),
    Signal("entropy", ("policy/entropy/*",), level, "down", "per action dim",
           "PPO policy entropy (min over agents; alarm when below)"),
    Signal("approx_kl", ("policy/approx_kl/*",), level, "up", "nats",
           "PPO approximate KL between rollout and updated policy (max over agents)"),
)
SIGNAL_NAMES = tuple(s.name for s in SIGNALS)


# ---------------------------------------------------------------------------------------------- series
def matched_tags(signal: Signal, tags: list[str]) -> list[str]:
    """The tags of the first glob of ``signal.tags`` that matches any of ``tags`` (sorted)."""
    for pattern in signal.tags:
        hits = sorted(t for t in tags if fnmatch.fnmatchcase(t, pattern))
        if hits:
            return hits
    return []


def _partner_tag(signal: Signal, tag: str, pattern: str) -> Optional[str]:
    if signal.partner is None:
        return None
    prefix = pattern.split("*", 1)[0]
    return signal.partner.format(tag[len(prefix):])


def aggregate(parts: list[Series], direction: str) -> Series:
    """One value per logged step: the max (up) or min (down) over every part's values at that step, NaN ignored;
    steps where every value is NaN are dropped."""
    if not parts:
        return _empty()
    steps = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1] for p in parts])
    keep = ~np.isnan(values)
    steps, values = steps[keep], values[keep]
    if not len(steps):
        return _empty()
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    starts = np.flatnonzero(np.concatenate([[True], steps[1:] != steps[:-1]]))
    reduce = np.maximum if direction == "up" else np.minimum
    return steps[starts], reduce.reduceat(values, starts)


def compute(signal: Signal, scalars: Scalars, params: SignalParams) -> Optional[Series]:
    """The signal's aggregated series in one run, or None (n/a) when the run logged none of its tags."""
    tags = matched_tags(signal, list(scalars))
    if not tags:
        return None
    pattern = next(p for p in signal.tags if fnmatch.fnmatchcase(tags[0], p))
    parts = []
    for tag in tags:
        partner_tag = _partner_tag(signal, tag, pattern)
        partner = series_of(scalars[partner_tag]) if partner_tag in scalars else None
        parts.append(signal.transform(series_of(scalars[tag]), partner, params))
    return aggregate(parts, signal.direction)


# ---------------------------------------------------------------------------------------------- traces
@dataclass
class Trace:
    """A signal in one run: the points where its running extreme improves (``steps``/``values``, original
    units), enough to find the first alarm step at any threshold; plus a summary of the whole series."""

    direction: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    points: int = 0  # logged values of the aggregated series (0: tags present, no defined value)
    first_step: Optional[int] = None
    last_step: Optional[int] = None
    min: Optional[float] = None
    max: Optional[float] = None
    final: Optional[float] = None

    def alarm_step(self, theta: float) -> Optional[int]:
        """First logged step where the signal reaches ``theta`` in its direction (None: never)."""
        sign = 1.0 if self.direction == "up" else -1.0
        env = sign * np.asarray(self.values, np.float64)
        i = int(np.searchsorted(env, sign * theta, side="left"))
        return int(self.steps[i]) if i < len(self.steps) else None


def _num(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def trace_of(series: Series, direction: str) -> Trace:
    """The running-extreme breakpoints of an aggregated series (``+inf``/``-inf`` kept: they cross any θ)."""
    steps, values = series
    t = Trace(direction, points=int(len(values)))
    if not len(values):
        return t
    sign = 1.0 if direction == "up" else -1.0
    run = np.maximum.accumulate(sign * values)
    improves = np.concatenate([[True], run[1:] > run[:-1]])
    t.steps = [int(s) for s in steps[improves]]
    t.values = [float(sign * v) for v in run[improves]]
    finite = values[np.isfinite(values)]
    t.first_step, t.last_step = int(steps[0]), int(steps[-1])
    if len(finite):
        t.min, t.max = float(finite.min()), float(finite.max())
    t.final = _num(float(values[-1]))
    return t


def traces(scalars: Scalars, params: SignalParams) -> dict[str, Optional[Trace]]:
    """Every registry signal's trace in one run (None: n/a), from the run's first gradient update on: an
    evaluation before it measures untrained networks (a warm-up critic's Q is ~0 whatever the return)."""
    start = learning_start(scalars)
    out: dict[str, Optional[Trace]] = {}
    for signal in SIGNALS:
        series = compute(signal, scalars, params)
        if series is not None and start is not None:
            keep = series[0] >= start
            series = series[0][keep], series[1][keep]
        out[signal.name] = None if series is None else trace_of(series, signal.direction)
    return out


def signal(name: str) -> Signal:
    return next(s for s in SIGNALS if s.name == name)
