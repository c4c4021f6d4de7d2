"""The fix registry is the one declaration of each fix: summary.json's `fixes`, doctor's advice, the fix-evidence
arm mapping and the docs' fix table all come from it, and a fix added only to the registry reaches each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marl_stability.analysis import doctor
from marl_stability.agents import algorithm_class
from marl_stability.config import RunConfig, flatten, load_config
from marl_stability.fixes import registry
from marl_stability.fixes.registry import OFF, ON, FixSpec

from test_doctor import make_collapsed_run

ROOT = Path(__file__).resolve().parents[1]


def test_docs_fix_table_is_the_registrys() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert registry.markdown_table() in text


def test_every_owned_key_exists_and_has_one_owner_per_family() -> None:
    """Each key a fix owns is a real config key; within one family no key has two owners (grad_clip and
    grad_clip_10 share theirs across the two families only)."""
    flat = list(flatten(RunConfig().to_dict()))
    for spec in registry.FIXES:
        for key in spec.settings:
            assert any(k == key or (key.endswith(".") and k.startswith(key)) for k in flat), (spec.id, key)
        for cfg_key in spec.overrides_for(RunConfig().to_dict()):
            assert cfg_key.split("=", 1)[0] in flat, (spec.id, cfg_key)
    for family in (OFF, ON):
        owners: dict[str, str] = {}
        for spec in registry.FIXES:
            if family in spec.families:
                for key in (k for k in flat if spec.owns(k)):
                    assert key not in owners, (family, key, owners.get(key), spec.id)
                    owners[key] = spec.id


@pytest.mark.parametrize("preset, algo_family", [("repeated_action_failure.yaml", OFF), ("mappo_failure.yaml", ON)])
def test_applying_a_fix_makes_it_applied(preset: str, algo_family: str) -> None:
    """For every advised fix the run does not use yet, its own overrides turn `applied` on (the registry's two
    views of a fix agree), except the ones whose overrides are relative steps (more entropy, fewer epochs)."""
    cfg = load_config(ROOT / "experiments" / preset)
    for spec in registry.for_family(algo_family):
        if spec.applied(cfg.to_dict()) or spec.id in ("entropy", "fewer_epochs"):
            continue
        fixed = load_config(ROOT / "experiments" / preset, spec.overrides_for(cfg.to_dict()))
        assert spec.applied(fixed.to_dict()), spec.id


def test_a_fix_added_only_to_the_registry_reaches_config_doctor_evidence_and_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "FIXES", list(registry.FIXES))
    toy = registry.register(FixSpec(
        "toy_huber_delta", "toy: a smaller Huber delta", "algorithm", "critic loss", ("maddpg.huber_delta",),
        ["maddpg.critic_loss=huber", "maddpg.huber_delta=0.5"],
        lambda c: (c.get("maddpg") or {}).get("huber_delta") == 0.5, {OFF: 0}, ("toy_arm",)))
    with pytest.raises(ValueError):
        registry.register(toy)
    # config: summary.json's fixes report the key it owns
    cfg = load_config(ROOT / "experiments" / "repeated_action_failure.yaml")
    assert registry.fix_settings(cfg, False)["maddpg.huber_delta"] == cfg.maddpg.huber_delta
    # doctor: advised, first (order 0), with its overrides
    run = tmp_path / "collapsed"
    make_collapsed_run(run)
    advice = doctor.diagnose(run)["fixes"]
    assert advice[0]["name"] == toy.title and advice[0]["set"] == toy.overrides
    # fix evidence: a single-fix arm named toy_arm is attributed to it (sweep_evidence reads this mapping)
    assert registry.arm_fixes()["toy_arm"] == toy.title
    # the docs' fix table (docs/configuration.md) lists it
    assert f"| {toy.title} | `toy_huber_delta` | `maddpg.huber_delta` |" in registry.markdown_table()


def test_fix_settings_is_what_summary_json_reports(tmp_path: Path) -> None:
    """summary.json's `fixes` of a real (tiny) run is registry.fix_settings of its config, keys unprefixed."""
    from marl_stability.training.trainer import Trainer

    cfg = load_config(ROOT / "experiments" / "maddpg_spread.yaml",
                      ["train.steps=300", "maddpg.warmup_steps=100", "maddpg.batch_size=32", "maddpg.update_every=50",
                       "train.eval_every=300", "train.eval_episodes=1", "env.num_envs=2"])
    Trainer(cfg, tmp_path / "r", quiet=True).run()
    reported = json.loads((tmp_path / "r" / "summary.json").read_text())["fixes"]
    assert reported == json.loads(json.dumps(registry.fix_settings(cfg, algorithm_class(cfg.algo).on_policy)))
    assert "grad_clip.critic.mode" in reported and "actor.output" in reported and "ppo.value_norm" not in reported


def test_single_fix_arms_join_the_fixes_of_their_family() -> None:
    """An arm name means the fix of the sweep's family: MAPPO's lower_lr arm (lr 7e-4) is not the off-policy lower-lr
    fix (lr / 10), and its grad_clip arm is the on-policy clip at 10; every arm name maps to one fix per family."""
    on, off = registry.arm_fixes(registry.ON), registry.arm_fixes(registry.OFF)
    assert "lower_lr" not in on and off["lower_lr"] == registry.get("lower_lr").title
    assert on["grad_clip"] == registry.get("grad_clip_10").title and off["clip"] == registry.get("grad_clip").title
    for family in (registry.ON, registry.OFF):
        arms = [a for f in registry.FIXES if family in f.families for a in f.evidence_arms]
        assert len(arms) == len(set(arms)), family
