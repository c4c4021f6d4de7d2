"""Statistics of a run's evaluation returns shared by the *degraded* label (``runs.labels``) and the online
degradation detector (``hooks.detectors``): one definition of "a sustained drop beyond the evaluation noise"."""

from __future__ import annotations

from typing import Sequence

import numpy as np

SMOOTH_EVALS = 3  # the trailing mean's window, in evaluations


def eval_noise(returns: Sequence[float]) -> float:
    """Robust std of one evaluation's return around the run's trend: 1.4826 x median |R_t - R_t-1| / sqrt(2)."""
    if len(returns) < 3:
        return 0.0
    diffs = np.abs(np.diff(np.asarray(returns, dtype=float)))
    return float(1.4826 * np.median(diffs) / np.sqrt(2.0))


def smoothed(returns: Sequence[float], k: int = SMOOTH_EVALS) -> np.ndarray:
    """Trailing mean of the last ``k`` evaluations at each evaluation (fewer at the start)."""
    r = np.asarray(returns, dtype=float)
    c = np.concatenate([[0.0], np.cumsum(r)])
    idx = np.arange(1, len(r) + 1)
    lo = np.maximum(idx - k, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def drop_from_best(returns: Sequence[float]) -> tuple[float, float]:
    """(drop, noise): the best trailing mean minus the latest one, and the evaluation noise."""
    if len(returns) < SMOOTH_EVALS + 1:
        return 0.0, eval_noise(returns)
    m = smoothed(returns)
    return float(m.max() - m[-1]), eval_noise(returns)
