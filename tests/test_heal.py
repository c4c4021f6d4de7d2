"""train.heal: detect, roll back to before the onset, apply a fix live, continue -- and leave a healthy run alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from marl_stability import agents
from marl_stability.config import load_config
from marl_stability.core.build import build_run
from marl_stability.core.live import adopt, blockers, healed_config
from marl_stability.core.scalar_file import read_columns
from marl_stability.fixes import registry
from marl_stability.fixes.objects import GlobalNormClip, ObsNormalizer, ReturnNormalizer
from marl_stability.core.roads import ON_POLICY
from marl_stability.hooks.heal import candidates
from marl_stability.training.trainer import TIMING_KEYS, Trainer
from scalar_files import TIMING_PREFIXES, _nan_safe, assert_scalar_file_exact, series_of_file

ROOT = Path(__file__).resolve().parents[1]
MADDPG = ROOT / "experiments" / "maddpg_spread.yaml"
MAPPO = ROOT / "experiments" / "mappo_spread.yaml"
# Seconds per run, yet warm-up, updates, evaluations and checkpoints all happen (as in test_training).
TINY = ["maddpg.warmup_steps=300", "maddpg.batch_size=64", "maddpg.update_every=10", "train.eval_every=500",
        "train.eval_episodes=2", "train.checkpoint_every=500", "train.log_every=1", "env.num_envs=2"]
TINY_PPO = ["env.num_envs=4", "ppo.rollout_steps=10", "ppo.epochs=2", "ppo.minibatches=2", "train.eval_every=200",
            "train.eval_episodes=2", "train.checkpoint_every=100", "train.log_every=1"]
HEAL = ["train.heal.enabled=true", "train.heal.snapshot_every=10"]


def cfg(steps: int, extra: list[str] = (), preset: Path = MADDPG):  # type: ignore[no-untyped-def]
    tiny = TINY_PPO if preset == MAPPO else TINY
    return load_config(preset, [*tiny, f"train.steps={steps}", *extra])


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}


# --------------------------------------------------------------------------- a healthy run is untouched
@pytest.mark.parametrize("preset", [MADDPG, MAPPO], ids=["maddpg", "mappo"])
def test_heal_without_a_trigger_changes_nothing(tmp_path: Path, preset: Path) -> None:
    """Snapshots (every update here) copy state and draw no random numbers: the summary and every logged scalar
    are those of the run without heal."""
    off = Trainer(cfg(1500, preset=preset), tmp_path / "off", quiet=True).run()
    on = Trainer(cfg(1500, ["train.heal.enabled=true", "train.heal.snapshot_every=1"], preset), tmp_path / "on",
                 quiet=True).run()
    assert off["status"] == "completed" and off["updates"] > 10
    assert "healing" not in on and without_timing(on) == without_timing(off)
    assert_scalar_file_exact(tmp_path / "on", tmp_path / "off")
    assert not (tmp_path / "on" / "healed.yaml").exists()


# --------------------------------------------------------------------------- a heal
def test_a_nonfinite_update_is_healed_by_rolling_back_and_applying_a_fix(tmp_path: Path) -> None:
    run = tmp_path / "healed"
    c = cfg(2000, [*HEAL, "debug.inject_nonfinite_at_update=40", "debug.inject_nonfinite_count=1"])
    expected = candidates(c, agents.algorithm_class("maddpg"), "neither", [])[0]
    summary = Trainer(c, run, quiet=True).run()
    assert summary["status"] == "completed" and summary["rollbacks"] == 1
    [h] = summary["healing"]
    assert h["trigger"] == "nonfinite" and h["fix"] == expected.id and h["outcome"] == "held to the end"
    # the sensible preset already clips and uses a low learning rate: the first fix it lacks is the reward's
    assert expected.id == "reward_scale" and h["settings"] == ["fixes.reward.mode=normalize"]
    # rolled back to the last snapshot before the onset (snapshots every 10 updates; update 40 failed)
    assert h["rolled_back_to"] <= h["onset_step"] <= h["alarm_step"]
    assert h["rolled_back_to_update"] == 30 and h["env_steps_lost"] == h["alarm_step"] - h["rolled_back_to"]
    assert h["data"].startswith("dropped the ") and h["env_steps_lost"] > 0
    assert summary["env_steps"] == 2000  # the budget counts the lost steps: nothing is rewound but the learner
    assert summary["fixes"]["reward.mode"] == "normalize"  # the run ended with the fix on
    healed = load_config(run / "healed.yaml")
    assert healed.fixes.reward.mode == "normalize" and load_config(run / "config.yaml").fixes.reward.mode == "none"
    cols = read_columns(run / "scalars.npz")
    assert list(np.frombuffer(cols.values["health/heal"], np.float32)) == [1.0]
    text = (run / "summary.json").read_text()
    assert json.loads(text)["healing"][0]["fix_title"] == registry.get("reward_scale").title


def test_a_relapse_adds_the_next_fix_and_heal_gives_up_after_max_attempts(tmp_path: Path) -> None:
    """NaN in every update from update 40 on: each heal relapses at once; after max_attempts the non-finite policy
    stops the run as diverged, with every attempt recorded."""
    c = cfg(3000, [*HEAL, "train.heal.max_attempts=2", "debug.inject_nonfinite_at_update=40", "train.max_nonfinite=1"])
    summary = Trainer(c, tmp_path / "r", quiet=True).run()
    assert summary["status"] == "diverged" and summary["rollbacks"] == 2
    first, second, third = summary["healing"]
    assert first["outcome"].startswith("relapsed: nonfinite") and second["outcome"].startswith("relapsed: nonfinite")
    assert first["fix"] != second["fix"] and third["fix"] is None and third["outcome"] == "not healed: 2 heals used"
    healed = load_config(tmp_path / "r" / "healed.yaml")  # both fixes stay on
    flat = healed.to_dict()
    assert registry.get(first["fix"]).applied(flat) and registry.get(second["fix"]).applied(flat)


def test_train_heal_fixes_chooses_the_fix(tmp_path: Path) -> None:
    c = cfg(1500, [*HEAL, "train.heal.fixes=[huber, adam]", "actor_optim.name=sgd", "critic_optim.name=sgd",
                   "debug.inject_nonfinite_at_update=40", "debug.inject_nonfinite_count=1"])
    summary = Trainer(c, tmp_path / "f", quiet=True).run()
    assert [h["fix"] for h in summary["healing"]] == ["huber"] and summary["status"] == "completed"


def test_resume_after_a_heal_is_exact(tmp_path: Path) -> None:
    """The heal happens before the checkpoint at 1,000 env steps; the resumed run rebuilds the healed config
    (here: Adam instead of SGD, a new optimizer kind) before loading the networks, and ends identical."""
    extra = [*HEAL, "train.heal.fixes=[adam]", "actor_optim.name=sgd", "critic_optim.name=sgd", "debug.inject_nonfinite_at_update=40", "debug.inject_nonfinite_count=1"]
    reference = Trainer(cfg(2000, extra), tmp_path / "ref", quiet=True).run()
    assert [h["fix"] for h in reference["healing"]] == ["adam"] and reference["healing"][0]["alarm_step"] < 1000
    first = Trainer(cfg(1000, [*extra, "train.checkpoints=resume"]), tmp_path / "cut", quiet=True).run()
    assert first["status"] == "completed" and first["healing"] == reference["healing"]
    resumed = Trainer(cfg(2000, [*extra, "train.checkpoints=resume"]), tmp_path / "cut", quiet=True).run(resume=True)
    assert without_timing(resumed) == without_timing(reference)
    # every series as the uninterrupted run's, but for the outcome metrics the first (completed) part wrote at 1,000
    cut, ref = (_nan_safe(series_of_file(tmp_path / d)) for d in ("cut", "ref"))
    skip = (*TIMING_PREFIXES, "hparams/")
    assert {t: v for t, v in cut.items() if not t.startswith(skip)} == {t: v for t, v in ref.items() if not t.startswith(skip)}


def test_mappo_heal_rolls_back_the_rollout_and_retunes_the_optimizers(tmp_path: Path) -> None:
    c = cfg(600, [*HEAL, "train.heal.snapshot_every=1", "debug.inject_nonfinite_at_update=5",
                  "debug.inject_nonfinite_count=1"], MAPPO)
    summary = Trainer(c, tmp_path / "ppo", quiet=True).run()
    assert summary["status"] == "completed"
    [h] = summary["healing"]
    assert h["road"] == ON_POLICY and h["rolled_back_to_update"] == 4 and h["fix"] is not None
    assert registry.ON in registry.get(h["fix"]).families


@pytest.mark.parametrize("preset, on, heals", [(MAPPO, None, False), (MAPPO, "true", True), (MADDPG, None, True)],
                         ids=["mappo-default", "mappo-on", "maddpg-default"])
def test_the_explosion_alarm_heals_off_policy_runs_and_on_policy_ones_only_when_asked(
        tmp_path: Path, preset: Path, on: str | None, heals: bool) -> None:
    """A critic's gradient grows under MAPPO's large reward scales in runs that end healthy: by default the alarm
    heals off-policy runs only (an absolute bound of 1e-6 makes it fire at the first logged update)."""
    extra = [*HEAL, "detectors.explosion_absolute=1e-6", *([f"train.heal.on_explosion={on}"] if on else [])]
    summary = Trainer(cfg(1200 if preset == MADDPG else 400, extra, preset), tmp_path / "r", quiet=True).run()
    assert summary["explosion_step"] is not None
    assert ("explosion" in [h["trigger"] for h in summary.get("healing") or []]) == heals


# --------------------------------------------------------------------------- live fixes
def _live(family: str) -> list[registry.FixSpec]:
    return [f for f in registry.FIXES if f.live is not None and family in f.families]


@pytest.mark.parametrize("algo", ["maddpg", "matd3", "mappo", "ippo"])
def test_every_live_fix_of_a_family_can_be_adopted_by_its_algorithms(algo: str) -> None:
    cls = agents.algorithm_class(algo)
    family = registry.ON if cls.on_policy else registry.OFF
    c = cfg(100, [f"algo={algo}"], MAPPO if cls.on_policy else MADDPG).to_dict()
    for fix in _live(family):
        keys = [s.partition("=")[0] for s in fix.overrides_for(c)]
        assert blockers(cls, keys) == [], f"{fix.id} is declared live but {algo} cannot adopt {keys}"


def test_adopt_changes_the_running_objects() -> None:
    base = cfg(100, ["actor.output=tanh", "actor.last_layer_init=null", "actor_optim.name=sgd", "critic_optim.name=sgd",
                     "fixes.grad_clip.critic.mode=none", "fixes.grad_clip.actor.mode=none",
                     "fixes.obs_norm.enabled=false"])
    parts = build_run(base, probe=False)
    parts.close()
    algo = parts.algorithm
    actor_params = [p for a in algo.actors for p in a.parameters()]
    before = [p.detach().clone() for p in actor_params]
    overrides = [s for fid in ("grad_clip", "obs_norm", "reward_scale", "tanh_scaled", "adam", "small_init", "huber")
                 for s in registry.get(fid).overrides_for(base.to_dict())]
    new = healed_config(base, overrides)
    changed = adopt(algo, base, new)
    assert "actor.output" in changed and algo.cfg is new
    assert isinstance(algo.fixes.critic_clip, GlobalNormClip) and isinstance(algo.fixes.obs, ObsNormalizer)
    assert isinstance(algo.fixes.reward, ReturnNormalizer)
    assert all(isinstance(o, torch.optim.Adam) for o in algo.actor_opts + algo.critic_opts)
    assert all(a.head.kind == "tanh_scaled" for a in algo.actors + algo.target_actors)
    for a, t in zip(algo.actors, algo.target_actors):  # the last layer re-initialised small, the target with it
        assert a.mlp.out.weight.abs().max() <= 0.003 and torch.equal(a.mlp.out.weight, t.mlp.out.weight)
    assert torch.equal(actor_params[0], before[0])  # the hidden layers kept their weights
    assert algo.critic_loss_fn.func.__name__ == "huber_loss"
    with pytest.raises(ValueError, match="cannot change actor.norm"):
        adopt(algo, new, healed_config(new, ["actor.norm=layernorm"]))


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("items, message", [
    (["train.heal.fixes=[nope]"], "train.heal.fixes: unknown fix 'nope'"),
    (["train.heal.fixes=[norm_layers]"], "train.heal.fixes: norm_layers cannot be applied to a running MADDPG run"),
    (["train.on_nonfinite=rollback"], "heal takes the non-finite policy's place"),
    (["train.on_nonfinite=rollback", "train.heal.on_nonfinite=false"], "heal takes the non-finite policy's place"),
])
def test_bad_heal_settings_are_one_line_errors(tmp_path: Path, items: list[str], message: str) -> None:
    args = [sys.executable, "-m", "marl_stability", "train", "-c", str(MADDPG), "--logdir", str(tmp_path), "--quiet",
            "--steps", "100", "--set", "train.heal.enabled=true"]
    for item in items:
        args += ["--set", item]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert not any(tmp_path.iterdir())


def test_heal_settings_are_described() -> None:
    from marl_stability.config import describe_schema

    text = describe_schema()
    assert "heal:" in text and "max_attempts" in text and "on_collapse" in text


def test_a_normalizer_switched_on_by_a_heal_has_the_statistics_of_one_on_from_the_start() -> None:
    from marl_stability.config import FixesConfig
    from marl_stability.fixes.objects import Shadowed, build_fixes, switched_on

    shadowed = build_fixes(FixesConfig(), num_envs=2, num_agents=3, obs_dim=4, gamma=0.9, shadow=True)
    on = build_fixes(FixesConfig.model_validate({"reward": {"mode": "normalize"}, "obs_norm": {"enabled": True}}),
                     num_envs=2, num_agents=3, obs_dim=4, gamma=0.9)
    assert isinstance(shadowed.obs, Shadowed) and isinstance(shadowed.reward, Shadowed)
    rng = np.random.default_rng(0)
    for t in range(30):
        obs, rew, done = rng.normal(3, 2, (2, 3, 4)), rng.normal(-5, 4, (2, 3)), np.full(2, t % 7 == 6)
        for f in (shadowed, on):
            f.obs.update(obs)
            f.reward.update(rew, done)
    x = torch.as_tensor(rng.normal(size=(5, 3, 4)), dtype=torch.float32)
    assert torch.equal(shadowed.obs(x), x) and shadowed.reward.scale() == 1.0  # off: it changes nothing
    obs_norm = switched_on(ObsNormalizer(3, 4, FixesConfig().obs_norm), shadowed.obs)
    reward_norm = switched_on(ReturnNormalizer(2, 3, 0.9, FixesConfig().reward.clip), shadowed.reward)
    assert torch.equal(obs_norm(x), on.obs(x)) and reward_norm.scale() == on.reward.scale()


def test_nonfinite_steps_of_an_update_a_heal_undid_leave_no_trace_in_the_detectors(tmp_path: Path) -> None:
    """An explosion alarm and NaN losses in the same update: the heal (on the alarm, fed first) undoes the update;
    the NaN that the trainer reports after it is not a relapse and not the run's first non-finite value."""
    c = cfg(1000, [*HEAL, "train.heal.max_attempts=1", "detectors.explosion_absolute=1e-9",
                   "debug.inject_nonfinite_at_update=1", "debug.inject_nonfinite_count=1"])
    summary = Trainer(c, tmp_path / "r", quiet=True).run()
    assert summary["healing"][0]["trigger"] == "explosion" and summary["nonfinite_step"] is None
    assert summary["nonfinite_events"] > 0  # they happened, and are counted


def test_several_updates_per_env_step_keep_one_snapshot_per_step(tmp_path: Path) -> None:
    c = cfg(600, [*HEAL, "maddpg.update_every=1", "train.heal.snapshot_every=1", "train.heal.keep=3",
                  "debug.inject_nonfinite_at_update=200", "debug.inject_nonfinite_count=1"])
    trainer = Trainer(c, tmp_path / "r", quiet=True)
    summary = trainer.run()
    assert summary["status"] == "completed" and [h["trigger"] for h in summary["healing"]] == ["nonfinite"]
    from marl_stability.hooks.heal import HealHook

    steps = [s["env_step"] for s in trainer.bus.find(HealHook).ring]
    assert len(steps) == 3 and steps == sorted(set(steps))


def test_a_healed_runs_final_checkpoint_renders_the_policy_it_ended_with(tmp_path: Path) -> None:
    from marl_stability.core.checkpoint import final_checkpoint, load_checkpoint
    from marl_stability.studies.reproduce import load_policy

    run = tmp_path / "r"
    c = cfg(1000, [*HEAL, "train.heal.fixes=[obs_norm, tanh_scaled]", "fixes.obs_norm.enabled=false",
                   "actor.output=linear_clip", "debug.inject_nonfinite_at_update=20", "debug.inject_nonfinite_count=1"])
    summary = Trainer(c, run, quiet=True).run()
    assert [h["fix"] for h in summary["healing"]] == ["obs_norm"]
    assert load_checkpoint(final_checkpoint(run))["healed"] == ["fixes.obs_norm.enabled=true"]
    ended, algo = load_policy(run)
    assert ended.fixes.obs_norm.enabled and isinstance(algo.fixes.obs, ObsNormalizer)


# --------------------------------------------------------------------------- cure
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "marl_stability", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_cure_measures_the_top_fixes_on_the_run_next_to_a_control(tmp_path: Path) -> None:
    from marl_stability.studies.cure import CONTROL, verdict

    sets = ["maddpg.warmup_steps=200", "maddpg.batch_size=32", "maddpg.update_every=10", "train.eval_every=200",
            "train.eval_episodes=2", "env.num_envs=2"]
    args = ["train", "-c", str(ROOT / "experiments" / "repeated_action_failure.yaml"), "--steps", "1200", "--quiet",
            "--logdir", str(tmp_path), "--name", "failed"]
    for s in sets:
        args += ["--set", s]
    assert _cli(*args).returncode == 0
    run = tmp_path / "failed"
    r = _cli("cure", str(run), "--top", "2", "--seeds", "2", "--workers", "2")
    assert r.returncode == 0, r.stderr
    result = json.loads((run / "cure" / "cure.json").read_text())
    assert result["control"]["n"] == 2 and result["control"]["seeds"] == [1000, 1001]  # fresh seeds
    assert [row["arm"] for row in result["fixes"]] == ["lower_lr", "reward_scale"]  # doctor's first two (saturation-first)
    for row in result["fixes"]:
        assert row["n"] == 2 and row["verdict"] == verdict(row, result["control"])
    text = (run / "cure" / "cure.md").read_text()
    assert "| control | the run's config | 0 | 2 |" in text and "starts from env step 0" in text
    assert (run / "cure" / "cured.yaml").is_file() == (result["cured_by"] is not None)
    # the verdict rule itself
    control_failed = {"n": 3, "healthy": 0}
    assert verdict({"n": 3, "healthy": 3}, control_failed) == "cures this run"
    assert verdict({"n": 3, "healthy": 3}, {"n": 3, "healthy": 3}) == "inconclusive"  # nothing failed to cure
    assert verdict({"n": 3, "healthy": 1}, control_failed) == "does not cure" and CONTROL == "control"
    again = _cli("cure", str(run), "--top", "2", "--seeds", "2")  # continues: nothing left to run
    assert again.returncode == 0 and json.loads((run / "cure" / "cure.json").read_text()) == result


def test_cure_refuses_a_healthy_or_missing_run(tmp_path: Path) -> None:
    # a task with two opposing teams has no do-nothing anchor to fall short of: a tiny run there is healthy (on
    # simple_spread it ends below doing nothing and is labelled degraded)
    Trainer(cfg(600, ["env.id=simple_adversary_v3", "env.kwargs={N: 2, max_cycles: 25, continuous_actions: true}"]),
            tmp_path / "ok", quiet=True).run()
    for target, message in ((tmp_path / "ok", "doctor calls this run healthy"), (tmp_path / "nope", "not a run directory")):
        r = _cli("cure", str(target))
        assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_cure_budget_leaves_the_labels_three_evaluations() -> None:
    """Twice the onset, at least onset + 20k and three evaluations (the labels' trailing median), at most the run's
    budget: a MAPPO failure at the first update (3.2k) is judged after 60k env steps, not after one or two
    evaluations."""
    from marl_stability.studies.cure import default_budget

    assert default_budget(3_200, 200_000, 20_000) == 60_000
    assert default_budget(30_000, 150_000, 5_000) == 60_000
    assert default_budget(30_384, 50_000, 5_000) == 50_000
    assert default_budget(None, 150_000, 5_000) == 150_000
