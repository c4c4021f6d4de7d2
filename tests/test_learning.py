"""Learning tests (slow): MADDPG with the sensible preset clearly beats the random policy on simple_spread, and
`marl-stability reproduce` gives both verdicts (failure reproduced, fix cures it) on two seeds.

Budget: 150k env steps per seed (about 3-4 minutes each on 2 CPU cores), seeds 0 and 1.
Threshold: the mean of the last three evaluations (10 episodes each, no exploration noise) is at least
-60 team return, where a random policy scores -74.6 +- 24.4 per episode (so +-8 for a 10-episode mean;
`python -m marl_stability.runs.anchors`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from marl_stability.runs.anchors import SPREAD_RANDOM
from marl_stability.config import load_config
from marl_stability.training.trainer import Trainer

PRESET = Path(__file__).resolve().parents[1] / "experiments" / "maddpg_spread.yaml"
RANDOM_TEAM_RETURN = SPREAD_RANDOM
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


REPRO_SEEDS = 2
REPRO_FIXED_THRESHOLD = -65.0


@pytest.mark.slow
def test_reproduction_verdicts(tmp_path: Path) -> None:
    """`marl-stability reproduce` at its default budget (150k env steps per run) on seeds 0 and 1.

    Failure preset: the collapse detector fires in every seed, the collapse still holds at the final
    evaluation, and the return does not improve after onset (in each seed the second half of the ~24
    evaluations after onset is less than +10 above the first half; noise of that difference ~3).
    Fixed preset: no collapse in any seed and every seed's final team return >= -65 (random: -74.6, so
    about 1.8 standard errors of a 10-episode mean above it; the 10 calibration seeds ended at -61.7 .. -41.4,
    seed 1, run here, at -61.7: runs are deterministic on one machine, but another CPU's fused kernels round
    differently, so a different machine may land a few points either side).
    The 10-seed calibration behind these thresholds is in docs/findings.md.
    Failure + heal (train.heal on the failure preset): a heal acts in every seed and every run ends labelled
    healthy (measured 10/10 on seeds 0-9: docs/heal.md).
    """
    import json

    from marl_stability.studies.reproduce import NO_GAIN_MARGIN, run_reproduce

    out = tmp_path / "repro"
    run_reproduce(out, seeds=REPRO_SEEDS, workers=2, quiet=True, render=False)
    s = json.loads((out / "summary.json").read_text())
    failure, fixed = s["arms"]["failure"], s["arms"]["fixed"]
    print(json.dumps({k: {f: v[f] for f in ("collapse_rate", "collapse_steps", "final_returns",
                                            "post_collapse_return_change", "peak_critic_grad_norm")}
                      for k, v in s["arms"].items()}))
    assert failure["seeds"] == fixed["seeds"] == list(range(REPRO_SEEDS))
    assert failure["collapse_rate"] == 1.0
    assert all(failure["still_collapsed_at_end"])
    # per seed, the change from the first to the second half of the ~24 evaluations after onset (noise ~3)
    assert all(g is not None and g < NO_GAIN_MARGIN for g in failure["post_collapse_return_change"])
    assert fixed["collapse_rate"] == 0.0
    assert min(fixed["final_returns"]) >= REPRO_FIXED_THRESHOLD, fixed["final_returns"]
    assert s["verdict"]["failure_reproduced"] and s["verdict"]["fixed_cured"]
    heal = s["verdict"]["heal"]
    assert heal["healed"] and heal["runs_healed"] == heal["runs"] == REPRO_SEEDS, heal
