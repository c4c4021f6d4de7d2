"""MADDPG and MATD3 train on the fast port's mixed-team, heterogeneous tasks through the normal CLI path.

simple_tag_v3 (3 adversaries with 16 observations vs 1 prey with 14), simple_world_comm_v3 (34 vs 28
observations, the leader's 9 action components vs 5) and simple_crypto_v3 (4 vs 8 observations, no
movement): every agent has its own sizes, so the algorithms take their per-agent update path. Fifty
gradient updates each: the runs must complete with finite statistics for every agent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from marl_stability.envs import FastMPEVectorEnv, uses_fast_backend
from typer.testing import CliRunner

from marl_stability.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "maddpg_spread.yaml"
TASKS = ("simple_tag_v3", "simple_world_comm_v3", "simple_crypto_v3")
SMALL = ["maddpg.warmup_steps=200", "maddpg.batch_size=32", "maddpg.update_every=8", "env.num_envs=4",
         "train.eval_every=300", "train.eval_episodes=2", "train.checkpoint_every=600", "train.log_every=10"]


@pytest.mark.parametrize("algo", ["maddpg", "matd3"])
@pytest.mark.parametrize("env_id", TASKS)
def test_trains_on_heterogeneous_fast_task(tmp_path: Path, env_id: str, algo: str) -> None:
    assert uses_fast_backend(env_id, "auto")  # the default backend runs these tasks on the port
    args = ["train", "-c", str(PRESET), "--env", env_id, "--steps", "600", "--seed", "3", "--logdir", str(tmp_path),
            "--name", "run", "--quiet", "--set", f"algo={algo}"]
    for override in SMALL:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["env"]["id"] == env_id and cfg["env"]["backend"] == "auto" and cfg["algo"] == algo
    layout = FastMPEVectorEnv(env_id, cfg["env"]["kwargs"], 1, 0).layout
    assert len(set(layout.obs_dims)) > 1  # really heterogeneous
    assert summary["status"] == "completed" and summary["agents"] == list(layout.agents)
    assert summary["env_steps"] == 600 and summary["updates"] == 50  # one per 8 env steps after warm-up
    assert summary["nonfinite_events"] == 0
    assert math.isfinite(summary["final_return"]) and len(summary["eval_history"]) == 2
    for net in ("actor", "critic"):
        assert 0 < summary["max_grad_norm"][net] < math.inf
    assert set(summary["action_stats"]) == set(layout.agents)
    for stats in summary["action_stats"].values():
        assert all(math.isfinite(v) for v in stats.values())
