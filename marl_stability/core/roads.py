"""The road a run took to its failure, decided from its logged scalars: the one rule that ``doctor`` /
``marl-stability mechanism`` apply to a finished run and ``train.heal`` applies online, when a detector fires.

- **explosion-first**: the critic's gradient norm grew to ``detectors.explosion_growth`` times its early level
  (the calibrated explosion rule: :func:`early_level`) before any agent's evaluation reached the saturation
  threshold;
- **saturation-first**: an agent's actions reached the saturation threshold while the critic's gradient was still
  below that growth;
- **undetermined**: the growth came between the last unsaturated and the first saturated evaluation;
- **neither**: a healthy run, or a failure with neither signal before it.

An on-policy run's failure (MAPPO, IPPO) is a road of its own, :data:`ON_POLICY`: its single-fix table is measured on
MAPPO's failure preset, where neither signal above leads (the log-std head drifts; docs/findings.md).

Pure functions of ``{tag: [(env step, value), ...]}`` (no torch, no files): the core layer, below the hooks that
heal a run and the analysis that explains one.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Optional

import numpy as np

ON_POLICY = "on-policy"  # the road (and fix-evidence mechanism) of an on-policy run's failure

Series = tuple[np.ndarray, np.ndarray]  # (env steps int64, values float64), sorted by step
Scalars = dict[str, list[tuple[int, float]]]


def series_of(points: list[tuple[int, float]]) -> Series:
    """A tag's (step, value) list as arrays sorted by step (stable: same-step values keep their order)."""
    steps = np.array([int(st) for st, _ in points], np.int64)
    values = np.array([float(v) for _, v in points], np.float64)
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]



def learning_start(scalars: Scalars) -> Optional[int]:
    """The run's first gradient update: the first step of any ``grad_norm/`` tag (None: no update logged)."""
    firsts = [min(st for st, _ in pts) for tag, pts in scalars.items() if tag.startswith("grad_norm/") and pts]
    return min(firsts) if firsts else None



def growth_alarm(points: list[tuple[int, float]], baseline: int, theta: float, min_norm: float,
                  below: bool = False) -> Optional[int]:
    """The online explosion rule on one logged series: the first step whose finite value exceeds ``theta`` x its
    early level (:func:`early_level`: the median of the first ``baseline`` finite values) and ``min_norm``, counted
    from the value after them; ``below``: the first value under ``theta`` x that level instead. Non-finite values
    are skipped, as online."""
    early, later = early_level(points, baseline)
    if early is None:
        return None
    for st, v in later:
        if (v < theta * early) if below else (v > theta * early and v > min_norm):
            return st
    return None


def early_level(points: list[tuple[int, float]], baseline: int) -> tuple[Optional[float], list[tuple[int, float]]]:
    """(median of the first ``baseline`` finite values, the finite values after them); (None, []) with fewer than
    two finite values or a level that is not positive.

    A series with no more than ``baseline`` finite values -- a run whose norms went non-finite within its first
    ``baseline`` logged updates, before the online rule has an early level -- takes the median of its first
    half instead: the level at the start of learning, read after the fact (the online detector cannot alarm in
    such a run; the mechanism can still say which signal moved first)."""
    finite = finite_points(points)
    if len(finite) < 2:
        return None, []
    k = len(finite) // 2 if short_series(finite, baseline) else baseline
    early = statistics.median(v for _, v in finite[:k])
    return (early, finite[k:]) if early > 0 else (None, [])


def finite_points(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(st, v) for st, v in series_points(points) if math.isfinite(v)]


def short_series(finite: list[tuple[int, float]], baseline: int) -> bool:
    """Too few finite values for the online rule's early level: :func:`early_level` falls back to the first half."""
    return len(finite) <= baseline


def series_points(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    steps, values = series_of(points)
    return list(zip(steps.tolist(), values.tolist()))


def first_growth(scalars: Scalars, prefix: str, baseline: int, theta: float, min_norm: float,
                  start: Optional[int], below: bool = False) -> Optional[int]:
    """Earliest alarm of the growth rule over every ``prefix<network>`` tag (None: never, or no such tag)."""
    hits = [growth_alarm([p for p in pts if start is None or p[0] >= start], baseline, theta, min_norm, below)
            for tag, pts in scalars.items() if tag.startswith(prefix)]
    hits = [h for h in hits if h is not None]
    return min(hits) if hits else None


def eval_steps(scalars: Scalars, prefix: str, theta: float, start: Optional[int]) -> tuple[Optional[int], Optional[int]]:
    """(first evaluation step from the first update on where any agent's ``prefix<agent>`` tag reaches ``theta``,
    the evaluation step just before it: the last one still below, or the first update)."""
    steps = sorted({st for tag, pts in scalars.items() if tag.startswith(prefix) for st, _ in pts
                    if start is None or st >= start})
    hit = [st for tag, pts in scalars.items() if tag.startswith(prefix) for st, v in pts
           if v >= theta and (start is None or st >= start)]
    if not hit:
        return None, None
    first = min(hit)
    before = [st for st in steps if st < first]
    return first, (before[-1] if before else start)


def explosion_rule(config: dict[str, Any], det: dict[str, Any]) -> tuple[float, int, float]:
    """(growth threshold, baseline in logged values, min norm): the run's explosion rule, with the baseline of
    ``explosion_baseline`` updates turned into logged values (``train.log_every``)."""
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    log_every = max(1, int(train.get("log_every", 10) or 10))
    baseline = max(1, round(int(det["explosion_baseline"]) / log_every))
    return float(det["explosion_growth"]), baseline, float(det["explosion_min_norm"])


def decide(label: str, onset: Optional[int], growth: float, t_grow: Optional[int], t_sat: Optional[int],
            t_unsat: Optional[int], has_critic: bool) -> tuple[str, str]:
    if label == "healthy":
        why = "the run ends healthy (no agent collapsed at the end, no divergence)"
        if t_grow is not None:
            why += f"; the critic gradient did reach {growth:g}x its early level at env step {t_grow} (a warning without a failure)"
        return "neither", why
    if not has_critic:
        return "neither", f"the run {label} at env step {onset}, but it logged no critic gradient norms (grad_norm/critic/*)"
    if t_grow is not None and t_grow <= onset and (t_sat is None or t_grow <= t_unsat):
        return "explosion-first", (
            f"the critic gradient norm reached {growth:g}x its early level at env step {t_grow}, before "
            + (f"saturation (first saturated evaluation: env step {t_sat}; the one before, at {t_unsat}, was not)"
               if t_sat is not None else "any agent saturated") + f" and the {label} onset (env step {onset})")
    if t_grow is not None and t_sat is not None and t_unsat < t_grow <= t_sat and t_grow <= onset:
        return "undetermined", (
            f"the critic gradient reached {growth:g}x its early level at env step {t_grow}, between the last "
            f"unsaturated evaluation ({t_unsat}) and the first saturated one ({t_sat}): evaluate more often to tell")
    if t_sat is not None and t_sat <= onset:
        return "saturation-first", (
            f"an agent's actions reached the saturation threshold at env step {t_sat} while the critic gradient was "
            + (f"still below {growth:g}x its early level (it got there at env step {t_grow})" if t_grow is not None
               else f"below {growth:g}x its early level for the whole run"))
    return "neither", f"the run {label} at env step {onset} with neither the critic gradient growth nor saturation before it"


def road(scalars: Scalars, config: dict[str, Any], det: dict[str, Any], label: str, onset: int,
         start: Optional[int] = None) -> dict[str, Any]:
    """The road to a failure labelled ``label`` with onset ``onset`` (``"healthy"``: none), from the points logged
    at ``start`` or later (default: the first gradient update). ``det``: the run's detector thresholds (a
    ``DetectorConfig`` as a dict). Returns ``mechanism``, ``why``, the growth threshold and the steps that decide
    it: ``growth_step`` (critic gradient at the threshold), ``saturation_step`` (first saturated evaluation) and
    ``unsaturated_step`` (the evaluation before it, or ``start``)."""
    growth, baseline, min_norm = explosion_rule(config, det)
    start = learning_start(scalars) if start is None else start
    t_grow = first_growth(scalars, "grad_norm/critic/", baseline, growth, min_norm, start)
    t_sat, t_unsat = eval_steps(scalars, "eval/saturation/", float(det["saturation_threshold"]), start)
    has_critic = any(tag.startswith("grad_norm/critic/") for tag in scalars)
    mechanism, why = decide(label, onset, growth, t_grow, t_sat, t_unsat, has_critic)
    return {"mechanism": mechanism, "why": why, "explosion_growth": growth, "growth_step": t_grow,
            "saturation_step": t_sat, "unsaturated_step": t_unsat, "start": start, "baseline": baseline}
