"""Learning test (slow): MADDPG with the sensible preset clearly beats the random policy on simple_spread.

Budget: 150k env steps per seed (about 3-4 minutes each on 2 CPU cores), seeds 0 and 1.
Threshold: the mean of the last three evaluations (10 episodes each, no exploration noise) is at least
-60 team return, where a random policy scores -77.5 +- 22.9 per episode (so +-7 for a 10-episode mean).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from marl_stability.config import load_config
from marl_stability.trainer import Trainer

PRESET = Path(__file__).resolve().parents[1] / "experiments" / "maddpg_spread.yaml"
RANDOM_TEAM_RETURN = -77.5
THRESHOLD = -60.0
BUDGET = 150_000


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_maddpg_beats_random_on_spread(tmp_path: Path, seed: int) -> None:
    cfg = load_config(PRESET, [f"seed={seed}", f"train.steps={BUDGET}"])
    summary = Trainer(cfg, tmp_path / f"s{seed}", quiet=True).run()
    assert summary["status"] == "completed" and summary["nonfinite_events"] == 0
    last3 = float(np.mean([e["team_return"] for e in summary["eval_history"][-3:]]))
    print(f"seed {seed}: last-3 eval mean {last3:.1f} (random {RANDOM_TEAM_RETURN}), {summary['wall_seconds']:.0f} s")
    assert last3 >= THRESHOLD, f"last-3 eval mean {last3:.1f} < {THRESHOLD}"
