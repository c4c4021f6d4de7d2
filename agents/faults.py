"""Fault injection for testing divergence handling (``debug.inject_nonfinite_at_update`` / ``_count``): the
built-in algorithms multiply their critic (value) losses by NaN in the chosen updates, so the non-finite path
(skipped steps, forensics, rollback, ``diverged``) can be exercised on purpose — by this project's tests and by
users checking their own hooks. Not part of the ``Algorithm`` interface: an algorithm that wants it asks here."""

from __future__ import annotations

from typing import Any


def nonfinite_injected(cfg: Any, update: int) -> bool:
    """Whether update number ``update`` (1-based) gets a NaN loss under ``cfg.debug``."""
    dbg = cfg.debug
    start, count = dbg.inject_nonfinite_at_update, dbg.inject_nonfinite_count
    return start is not None and update >= start and (count is None or update < start + count)
