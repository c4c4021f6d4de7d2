"""MAPPO's on-policy failure: the failure preset really diverges (non-finite values within two updates), the
fixed preset does not, the single-fix file changes one thing per arm, and the reproduction report counts every
failure detector (divergence, entropy collapse, action collapse) for an on-policy sweep end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from marl_stability.config import flatten, load_config
from marl_stability.studies.reproduce import ArmResult, verdict
from marl_stability.studies.sweep import make_plan
from marl_stability.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"


def _run(tmp_path: Path, preset: str, steps: int, seed: int = 0) -> dict:
    cfg = load_config(EXP / preset, [f"seed={seed}", f"train.steps={steps}", "train.eval_every=3200",
                                      "train.eval_episodes=4"])
    Trainer(cfg, tmp_path / f"{preset}_{seed}", quiet=True).run()
    return json.loads((tmp_path / f"{preset}_{seed}" / "summary.json").read_text())


@pytest.mark.parametrize("seed", [0, 1])
def test_failure_preset_diverges_within_two_updates(tmp_path, seed):
    """One rollout is 128 x 25 = 3200 env steps; the preset's NaN comes at the first or second update."""
    s = _run(tmp_path, "mappo_failure.yaml", 12800, seed)
    assert s["status"] == "diverged"
    assert s["nonfinite_step"] is not None and s["nonfinite_step"] <= 6400
    assert s["kl_spike_step"] == 3200  # the ratio spikes at the first update, before the NaN


def test_fixed_preset_stays_finite(tmp_path):
    s = _run(tmp_path, "mappo_fixed.yaml", 12800)
    assert s["status"] == "completed" and s["nonfinite_step"] is None and s["kl_spike_step"] is None
    assert s["final_return"] is not None and s["final_return"] > -120


def test_single_fix_arms_change_one_fix_each():
    plan = make_plan(EXP / "reproduce_mappo_single_fixes.yaml", probe=False)
    base = flatten(plan.arm("failure").config)
    assert base == flatten(load_config(EXP / "mappo_failure.yaml").to_dict()) | {"train.torch_threads": 1}
    for arm in plan.arms[1:]:
        changed = {k for k, v in flatten(arm.config).items() if base.get(k) != v}
        assert changed and changed <= set(arm.overrides), (arm.name, changed)  # an override may equal the base
    repro = make_plan(EXP / "reproduce_mappo.yaml", probe=False)
    assert flatten(repro.arm("failure").config) == base


def _arm(name: str, nonfinite: list, collapse: list | None = None, returns: list | None = None) -> ArmResult:
    n = len(nonfinite)
    returns = returns or [float("nan")] * n
    return ArmResult(name=name, preset="p", seeds=list(range(n)), runs=[""] * n, final_returns=returns,
                     final_return_mean=-50.0, final_return_ci=(-55.0, -45.0), collapse_steps=collapse or [None] * n,
                     explosion_steps=[None] * n, peak_critic_grad=[1.0] * n, peak_actor_grad=[1.0] * n, repeat=[0.0] * n,
                     saturation=[0.0] * n, sensitivity=[1.0] * n, nonfinite_steps=nonfinite,
                     entropy_collapse_steps=[None] * n, kl_spike_steps=[3200] * n)


def test_divergence_counts_as_the_failure_and_keeps_maddpg_verdicts():
    fail, fixed = _arm("failure", [3200, 6400, 3200]), _arm("fixed", [None] * 3, returns=[-50.0] * 3)
    assert fail.failures == 3 and fail.failure_steps == [3200, 6400, 3200] and fail.extended
    v = verdict(fail, fixed)
    assert v["failure_reproduced"] and v["fixed_cured"] and "non-finite" in v["criteria"]["failure"]
    v = verdict(_arm("failure", [3200, None, None]), fixed)  # 1/3 is not >= 90%
    assert not v["failure_reproduced"]
    v = verdict(fail, _arm("fixed", [None, 6400, None], returns=[-50.0] * 3))
    assert not v["fixed_cured"]


@pytest.mark.parametrize("workers", ["2"])
def test_reproduce_on_policy_end_to_end(tmp_path, workers):
    """A 2-seed MAPPO reproduction on a short budget: the failure arm diverges, the report says so, the
    diverged arm's episode is not rendered (its parameters are NaN) and the fixed arm's is."""
    spec = tmp_path / "repro.yaml"
    spec.write_text(f"name: tiny\nbase:\n  config: {EXP / 'mappo_failure.yaml'}\n  set:\n    train.eval_every: 3200\n"
                    f"    train.eval_episodes: 2\ndesign: arms\narms:\n  failure: {{}}\n"
                    f"  fixed: {{config: {EXP / 'mappo_fixed.yaml'}}}\nseeds: 2\nsteps: 9600\n")
    r = subprocess.run([sys.executable, "-m", "marl_stability", "reproduce", "--config", str(spec), "--out",
                        str(tmp_path / "out"), "--workers", workers, "--quiet"], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["verdict"]["failure_reproduced"] is True
    assert all(step is not None and step <= 6400 for step in summary["arms"]["failure"]["nonfinite_steps"])
    assert summary["arms"]["fixed"]["nonfinite_steps"] == [None, None]
    assert summary["episodes"]["failure"]["skipped"].startswith("the run diverged")
    assert summary["episodes"]["fixed"]["frames"] > 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| failure | 2/2 [0.34, 1.00] |" in report and "diverged (non-finite)" in report  # with its Wilson interval
    assert "failure: not rendered, the run diverged" in report
