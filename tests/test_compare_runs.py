"""compare_runs: groups of runs side by side, only runs that used their budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marl_stability.errors import UserError
from marl_stability.studies import compare_runs


def _run(root: Path, name: str, algo: str, final: float, status: str = "completed") -> Path:
    d = root / name
    d.mkdir()
    hist = [{"env_steps": 1000 * k, "team_return": final - 3 + k} for k in range(1, 4)]
    (d / "summary.json").write_text(json.dumps({
        "status": status, "algo": algo, "final_return": final, "best_return": final + 1, "eval_history": hist,
        "wall_seconds": 100.0, "env_steps_per_second": 30.0}))
    return d


def test_groups_by_algo_with_probability_of_improvement(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = [_run(tmp_path, f"a_s{i}", "maddpg", -40.0 - i) for i in range(3)]
    runs += [_run(tmp_path, f"b_s{i}", "matd3", -30.0 - i) for i in range(3)]
    compare_runs.main([str(r) for r in runs] + ["--reference", "maddpg"])
    out = capsys.readouterr().out
    maddpg = next(line for line in out.splitlines() if line.startswith("| maddpg"))
    matd3 = next(line for line in out.splitlines() if line.startswith("| matd3"))
    assert "| 3 | -41.0 [" in maddpg and "| 3 | -31.0 [" in matd3
    assert matd3.rstrip(" |").endswith("1.00")  # every MATD3 seed above every MADDPG seed


@pytest.mark.parametrize("status", ["interrupted", "env_error", "running"])
def test_runs_that_did_not_use_their_budget_are_refused(tmp_path: Path, status: str) -> None:
    ok = _run(tmp_path, "a_s0", "maddpg", -40.0)
    bad = _run(tmp_path, "a_s1", "maddpg", -20.0, status=status)
    with pytest.raises(UserError, match=f"status {status}"):
        compare_runs.main([str(ok), str(bad)])
