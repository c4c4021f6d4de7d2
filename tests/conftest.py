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


# ---------------------------------------------------------------------------------------------- test tiers
# Every test file in one tier (tests/test_structure.py checks the table covers them all); a test marked `slow`
# is in the learning tier whatever its file. Run one tier with `pytest -m unit` (or `make test-unit`, ...).
#   unit:        functions and objects in process (a few start a short child process or a few-hundred-step run):
#                about 35 s in all
#   lockstep:    the fast port against mpe2 itself, bit for bit
#   integration: real (tiny) runs, subprocesses, kill -9 resumes, sweeps on the process pool and on Ray, the
#                wheel build, TensorBoard files read back
#   learning:    long learning runs with a stated budget and threshold (marked slow; `make test-slow`)
TIERS: dict[str, tuple[str, ...]] = {
    "unit": ("test_batched.py", "test_bench_env.py", "test_bench_instr.py", "test_compare_runs.py", "test_config.py",
             "test_cross_task.py", "test_detect.py", "test_envs.py", "test_fix_registry.py", "test_fixes.py",
             "test_monitor.py", "test_networks.py", "test_release.py", "test_structure.py", "test_tool_args.py"),
    "lockstep": ("test_fast_mpe.py", "test_fast_mpe_lockstep.py", "test_fast_mpe_physics.py"),
    "integration": ("test_anchors.py", "test_bench.py", "test_benchmarl.py", "test_calibrate.py", "test_cli_errors.py", "test_doctor.py",
                    "test_cross_task_runs.py", "test_edges.py", "test_engagement.py", "test_fast_mpe_training.py", "test_heal.py", "test_hooks.py", "test_start_from.py", "test_mappo.py",
                    "test_matd3.py",
                    "test_algorithm_contract.py",
                    "test_mechanism.py", "test_plasticity.py", "test_docs.py", "test_report.py", "test_reproduce.py",
                    "test_run_record.py",
                    "test_reproduce_mappo.py", "test_sweep.py", "test_tensorboard.py", "test_training.py",
                    "test_wheel.py"),
    "learning": ("test_learning.py",),
}
TIER_OF_FILE = {name: tier for tier, names in TIERS.items() for name in names}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = "learning" if item.get_closest_marker("slow") else TIER_OF_FILE.get(item.path.name, "unit")
        item.add_marker(getattr(pytest.mark, tier))
