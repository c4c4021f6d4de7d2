"""Which fixes acted: measured where a fix can idle (clipping, reward scale, observation statistics), stated
where it acts by construction; in summary.json, the run's Text summary and the sweep reports."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from marl_stability.config import load_config
from marl_stability.core.summary import RunSummary
from marl_stability.core.tb_run import summary_text
from marl_stability.runs.trials import fix_engagement_section
from marl_stability.training.trainer import Trainer

TINY = ["train.steps=2000", "maddpg.warmup_steps=800", "maddpg.batch_size=64", "maddpg.update_every=10",
        "train.eval_every=1000", "train.eval_episodes=2", "train.checkpoints=none", "env.num_envs=2"]


def _engagement(tmp_path: Path, name: str, extra: list[str]) -> dict:
    cfg = load_config("experiments/exploding_critic_fixed.yaml", TINY + extra)
    return Trainer(cfg, tmp_path / name, quiet=True).run()["fix_engagement"]


@pytest.mark.parametrize("limit, clipped", [(1e-6, True), (1e12, False)])
def test_clipping_is_engaged_only_when_the_limit_is_reached(tmp_path: Path, limit: float, clipped: bool) -> None:
    e = _engagement(tmp_path, f"clip{limit}", [f"fixes.grad_clip.critic.max={limit}", f"fixes.grad_clip.actor.max={limit}"])
    assert e["grad_clip"]["engaged"] is clipped
    assert ("100.0% of" if clipped else "0.0% of") in e["grad_clip"]["how"]
    # the rest of the bundle: reward normalization and observation statistics moved; init and head by construction
    assert e["reward_scale"]["engaged"] is True and e["obs_norm"]["engaged"] is True
    assert e["small_init"]["engaged"] is None and e["tanh_scaled"]["engaged"] is None
    assert "by construction" in e["small_init"]["how"]


def test_a_run_without_fixes_of_that_kind_reports_none_of_them(tmp_path: Path) -> None:
    e = _engagement(tmp_path, "bare", ["fixes.grad_clip.critic.mode=none", "fixes.grad_clip.actor.mode=none",
                                        "fixes.reward.mode=none", "fixes.obs_norm.enabled=false"])
    assert not {"grad_clip", "reward_scale", "obs_norm"} & set(e)


def _summary(engagement: dict) -> RunSummary:
    return RunSummary(status="completed", env_steps=100, fix_engagement=engagement)


def test_text_summary_and_reports_say_which_fixes_acted() -> None:
    e = {"grad_clip": {"engaged": False, "how": "critic clipped in 0.0% of 10 gradient steps"},
         "small_init": {"engaged": None, "how": "acts by construction (network: network construction); not measured"}}
    text = summary_text(_summary(e))
    assert "| grad_clip | **no** | critic clipped in 0.0% of 10 gradient steps |" in text
    assert "| small_init | by construction |" in text
    trials = SimpleNamespace(rows=[{"arm": "fixed", "run_dir": "a"}, {"arm": "fixed", "run_dir": "b"}],
                             summaries={"a": _summary(e), "b": _summary({**e, "grad_clip": {"engaged": True, "how": "x"}})})
    lines = fix_engagement_section(trials)
    assert "| `fixed` | `grad_clip` | 1/2 runs | critic clipped in 0.0% of 10 gradient steps |" in lines
    assert "| `fixed` | `small_init` | by construction |" in "\n".join(lines)
    assert fix_engagement_section(SimpleNamespace(rows=[], summaries={})) == []


def test_on_policy_runs_list_only_on_policy_fixes() -> None:
    from marl_stability.core.tb_run import fixes_in_effect

    fixed = fixes_in_effect(load_config("experiments/mappo_fixed.yaml"), on_policy=True).split(", ")
    assert "grad_clip_10" in fixed and not {"grad_clip", "tanh_scaled", "lower_lr"} & set(fixed)


def test_observation_statistics_count_each_agents_own_inputs_only(tmp_path: Path) -> None:
    """speaker_listener: the speaker sees 3 inputs, the listener 11; the speaker's 8 padding columns are no input."""
    cfg = load_config("experiments/repeated_action_fixed.yaml", [
        "env.id=simple_speaker_listener_v4", "env.kwargs={continuous_actions: true}", "train.steps=600",
        "maddpg.warmup_steps=300", "maddpg.batch_size=32", "train.eval_every=600", "train.eval_episodes=1",
        "train.checkpoints=none", "env.num_envs=2"])
    e = Trainer(cfg, tmp_path / "sl", quiet=True).run()["fix_engagement"]["obs_norm"]
    assert "over 14 inputs" in e["how"], e
