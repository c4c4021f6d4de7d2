"""Config: presets, base inheritance, --set overrides, schema output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from marl_stability.config import RunConfig, config_diff, describe_schema, load_config
from marl_stability.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
FIX_PRESETS = sorted(EXPERIMENTS.glob("fix_*.yaml"))


# Sweep (ablation) files have a design; every other YAML file in experiments/ is a run preset.
SWEEP_FILES = sorted(p for p in EXPERIMENTS.glob("*.yaml") if re.search(r"^design:", p.read_text(), re.M))


def test_every_preset_validates_and_starts_with_a_comment() -> None:
    presets = sorted(p for p in EXPERIMENTS.glob("*.yaml") if p not in SWEEP_FILES)
    assert len(presets) >= 8
    for p in presets:
        assert p.read_text().startswith("#"), f"{p.name} must start with a comment saying what it shows"
        assert isinstance(load_config(p), RunConfig)


def test_every_ablation_file_expands_into_valid_arms() -> None:
    from marl_stability.studies.sweep import make_plan

    ablations = SWEEP_FILES
    assert ablations
    for p in ablations:
        assert p.read_text().startswith("#"), f"{p.name} must start with a comment saying what it asks"
        plan = make_plan(p, None)
        # A comparison needs two arms; a detector-calibration corpus sweep may hold one preset.
        assert len(plan.arms) >= (1 if p.stem.startswith("calibration_") else 2)


@pytest.mark.parametrize("preset", FIX_PRESETS, ids=[p.stem for p in FIX_PRESETS])
def test_single_fix_presets_change_only_their_fix(preset: Path) -> None:
    base = load_config(EXPERIMENTS / "no_fix_baseline.yaml")
    diff = config_diff(base, load_config(preset))
    assert diff, f"{preset.name} changes nothing"
    groups = {k.split(".")[0] for k in diff}
    # one fix = one concern: either the fixes section, one network, the optimizers, or the critic loss
    assert groups in ({"fixes"}, {"actor"}, {"actor", "critic"}, {"actor_optim", "critic_optim"}, {"maddpg"}), diff


def test_base_chain_merges_and_detects_cycles(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("seed: 3\nactor: {hidden_sizes: [8]}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nactor: {activation: tanh}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.seed == 3 and cfg.actor.hidden_sizes == [8] and cfg.actor.activation == "tanh"
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(UserError, match="circular"):
        load_config(tmp_path / "c.yaml")


def test_set_overrides_parse_yaml_values() -> None:
    cfg = load_config(EXPERIMENTS / "maddpg_spread.yaml",
                      ["actor_optim.lr=3e-4", "actor.hidden_sizes=[32, 16]", "fixes.obs_norm.enabled=false", "env.kwargs.N=4"])
    assert cfg.actor_optim.lr == pytest.approx(3e-4)
    assert cfg.actor.hidden_sizes == [32, 16]
    assert cfg.fixes.obs_norm.enabled is False
    assert cfg.env.kwargs == {"N": 4, "max_cycles": 25, "continuous_actions": True}


@pytest.mark.parametrize("override, message", [
    ("actor.hidden_size=[3]", "actor.hidden_size: unknown key"),
    ("critic_optim.lr=-1", "critic_optim.lr"),
    ("train.steps=0", "train.steps"),
    ("actor.hidden_sizes=[0]", "hidden_sizes"),
    ("fixes.grad_clip.actor.max=0", "fixes.grad_clip.actor.max"),
])
def test_invalid_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        load_config(EXPERIMENTS / "maddpg_spread.yaml", [override])


def test_schema_lists_every_section_with_descriptions() -> None:
    text = describe_schema()
    for section in ("env:", "actor:", "critic:", "actor_optim:", "maddpg:", "fixes:", "train:"):
        assert section in text
    assert "gradient clipping" in text and "# learning rate" in text
    # every leaf line carries a description comment
    leaves = [l for l in text.splitlines() if not l.rstrip().endswith(":") and "#" not in l.split(":", 1)[0]]
    assert all("  # " in l for l in leaves)


def test_config_module_does_not_import_torch() -> None:
    """The config sits at the bottom of the import graph: reading or validating a config (report, doctor,
    ``config`` command) must not load torch. A fresh interpreter, so earlier tests' imports do not count."""
    code = ("import sys, marl_stability.config, marl_stability.core.summary, marl_stability.fmt; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
