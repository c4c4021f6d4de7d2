"""One number formatter for reports, tables and one-line messages (no heavy imports)."""

from __future__ import annotations

import math
from typing import Optional

MISSING = "n/a"


def fmt_number(value: Optional[float], spec: str = ".2f") -> str:
    """``format(value, spec)``, or ``n/a`` for a missing (None) or non-finite (NaN, inf) number."""
    if value is None or not math.isfinite(value):
        return MISSING
    return format(value, spec)
