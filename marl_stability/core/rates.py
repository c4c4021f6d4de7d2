"""A rate over seeds ("9 of 10 runs collapsed") with its 95% Wilson interval: what every table of rates shows
(sweep reports, reproductions, cross-task verdicts)."""

from __future__ import annotations

import math

from marl_stability.fmt import MISSING

Z95 = 1.959963984540054  # standard normal quantile at 0.975


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (closed form); (nan, nan) when n == 0.

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at k = 0 or k = n, which is
    what a collapse rate over a handful of seeds needs.
    """
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At k = 0 (k = n) the lower (upper) bound is exactly 0 (1); rounding would leave a hair's breadth off.
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def rate_text(k: int, n: int) -> str:
    """``k/n [lo, hi]``: a rate with its 95% Wilson interval (what ten seeds can and cannot say); n/a for n = 0."""
    if n == 0:
        return MISSING
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} [{lo:.2f}, {hi:.2f}]"
