"""Shared fixtures (kept small): the stable preset and a byte snapshot of a folder tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
PRESET = REPO / "experiments" / "maddpg_spread.yaml"


@pytest.fixture
def preset() -> Path:
    """The stable MADDPG preset every CLI test starts from."""
    assert PRESET.is_file()
    return PRESET


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """relative path -> file bytes (None for folders), for every entry under ``root``."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = None if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, bytes | None]]:
    return _snapshot


class GradRecorder:
    """An algorithm's event bus for unit tests: keeps the last pre/post-clip norm of each network."""

    def __init__(self) -> None:
        self.pre: dict[str, float] = {}
        self.post: dict[str, float] = {}
        self.order: list[tuple[str, str]] = []

    def after_backward(self, ev) -> None:  # type: ignore[no-untyped-def]
        self.pre[ev.model] = ev.norms.total
        self.order.append(("after_backward", ev.model))

    def after_clip(self, ev) -> None:  # type: ignore[no-untyped-def]
        self.post[ev.model] = ev.clip.post_norm
        self.order.append(("after_clip", ev.model))

    def after_step(self, ev) -> None:  # type: ignore[no-untyped-def]
        self.order.append(("after_step", ev.model))


def mpe_actions(layout: Any, row: np.ndarray) -> dict[str, Any]:
    """SyncVectorEnv's conversion of one env's [N, A] row into mpe2's action dict (the lockstep tests' own
    copy, kept apart from marl_stability.envs.vector on purpose)."""
    out: dict[str, Any] = {}
    for i, agent in enumerate(layout.agents):
        dim = layout.act_dims[i]
        if layout.discrete[i]:
            out[agent] = int(np.argmax(row[i, :dim]))
        else:
            act = np.asarray(row[i, :dim], dtype=np.float32)
            out[agent] = np.clip(act, layout.act_low[i, :dim], layout.act_high[i, :dim])
    return out
