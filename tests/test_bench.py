"""The benchmark script's pieces run and return sane numbers (the speed targets themselves are checked by
running `python -m marl_stability.bench.speed`, not by timed tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from marl_stability.bench import speed as bench


def test_env_rates_are_positive() -> None:
    assert bench.env_steps_per_second_mpe2(0.2) > 0
    assert bench.env_steps_per_second_fast(4, 0.2) > 0


@pytest.mark.parametrize("mode", [bench.BATCHED, bench.LOOP])
def test_training_rate_runs_both_agent_paths(tmp_path: Path, mode: str) -> None:
    rate = bench.training_rate([mode, "maddpg.batch_size=64", "maddpg.update_every=10"], 1600, tmp_path, "t")
    assert rate > 0
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["updates"] > 0 and summary["status"] == "completed"


def test_full_run_reports_the_evaluation_clock(tmp_path: Path) -> None:
    assert bench.FULL_RUN_PRESET.is_file()
    threads = torch.get_num_threads()
    try:
        r = bench.full_run(0, 1600, tmp_path)  # warm-up only: one final evaluation of 50 episodes
    finally:
        torch.set_num_threads(threads)  # the preset asks for 2; leave the test process as it was
    assert r["preset"] == "maddpg_spread_fast.yaml" and r["env_steps"] == 1600 and r["eval_episodes"] == 50
    (step, ret, seconds), = r["curve"]
    assert step == 1600 and ret == pytest.approx(r["final_return"], abs=0.01) == r["last3_mean_return"]
    assert 0 < seconds <= r["seconds"]
    if ret >= bench.TARGET_RETURN:  # a random policy almost never does; then both target fields agree
        assert r["target_reached_at_env_step"] == 1600 and r["target_reached_at_seconds"] == seconds
    else:
        assert r["target_reached_at_env_step"] is None and r["target_reached_at_seconds"] is None
