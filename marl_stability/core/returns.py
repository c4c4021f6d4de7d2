"""Statistics of a run's evaluation returns shared by the *degraded* label (``runs.labels``) and the online
degradation detector (``hooks.detectors``): one definition of "a sustained drop beyond the evaluation noise"."""

from __future__ import annotations

from typing import Sequence

import numpy as np

SMOOTH_EVALS = 3  # the trailing median's window, in evaluations


def eval_noise(returns: Sequence[float]) -> float:
    """Robust std of one evaluation's return around the run's trend: 1.4826 x median |R_t - R_t-1| / sqrt(2)."""
    if len(returns) < 3:
        return 0.0
    diffs = np.abs(np.diff(np.asarray(returns, dtype=float)))
    return float(1.4826 * np.median(diffs) / np.sqrt(2.0))


def smoothed(returns: Sequence[float], k: int = SMOOTH_EVALS) -> np.ndarray:
    """Trailing median of the last ``k`` evaluations at each evaluation (fewer at the start): one lucky or unlucky
    evaluation moves it not at all."""
    r = np.asarray(returns, dtype=float)
    return np.array([np.median(r[max(0, i + 1 - k): i + 1]) for i in range(len(r))])


def full_windows(returns: Sequence[float]) -> np.ndarray:
    """The trailing medians over complete windows only (a lucky first evaluation alone is no "best")."""
    return smoothed(returns)[SMOOTH_EVALS - 1:]


def noise_floor(returns: Sequence[float]) -> float:
    """:func:`eval_noise`, but never below 1% of the returns' scale: evaluations that repeat the same return (a
    frozen deterministic policy) have zero measured noise, and any drop would otherwise be infinitely significant
    or, with a zero margin test, never counted."""
    r = np.abs(np.asarray(returns, dtype=float))
    return max(eval_noise(returns), 0.01 * float(r.max()) if r.size else 0.0, 1e-9)


def drop_from_best(returns: Sequence[float]) -> tuple[float, float]:
    """(drop, noise): the best trailing median (complete windows) minus the latest one, and the evaluation noise
    (with its floor)."""
    if len(returns) < SMOOTH_EVALS + 1:
        return 0.0, noise_floor(returns) if len(returns) else 0.0
    m = full_windows(returns)
    return float(m.max() - m[-1]), noise_floor(returns)
