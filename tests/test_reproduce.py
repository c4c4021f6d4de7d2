"""``marl-stability reproduce``: a tiny failure-vs-fixed sweep end to end (files, summary.json, figures, GIFs),
its bad inputs, and the presets it is built from. The calibrated claim itself is checked by
tests/test_learning.py::test_reproduction_verdicts (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from marl_stability.config import flatten, load_config
from marl_stability.studies import reproduce
from marl_stability.studies.sweep import make_plan

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
TINY_SET = """
  set:
    maddpg.warmup_steps: 200
    maddpg.batch_size: 32
    maddpg.update_every: 10
    train.eval_every: 200
    train.eval_episodes: 2
    train.checkpoint_every: 400
    env.num_envs: 2
"""


def tiny_file(tmp_path: Path, arms: str = "  failure: {}\n  fixed: {config: " + str(EXP / "repeated_action_fixed.yaml") + "}\n",
              name: str = "repro.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"name: tiny_repro\nbase:\n  config: {EXP / 'repeated_action_failure.yaml'}\n{TINY_SET}"
                    f"design: arms\narms:\n{arms}reference: failure\nseeds: 2\nsteps: 800\n")
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "marl_stability", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("repro")
    out = tmp / "out"
    # seeds of one's own (the file says 2 seeds: 0 and 1)
    r = cli("reproduce", "--config", str(tiny_file(tmp)), "--out", str(out), "--workers", "2", "--seed-list", "3,7",
            cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert "failure reproduced:" in r.stdout and "report:" in r.stdout
    return out


def test_reproduction_writes_every_artifact(tiny_run: Path) -> None:
    out = tiny_run
    for f in ("report.md", "summary.json", "results.csv", "arms.json", "index.json",
              "figures/return.png", "figures/grad_norms.png", "figures/saturation_repeat.png",
              "figures/actions_early_late.png", "figures/episode_failure.gif", "figures/episode_fixed.gif",
              "figures/filmstrip.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    # one TensorBoard run per arm x seed, side by side under runs/
    for arm in ("failure", "fixed"):
        for seed in (3, 7):
            run = out / "runs" / arm / f"seed_{seed}"
            assert list(run.glob("events.out.tfevents.*")), run
            assert (run / "config.yaml").is_file()


def test_summary_json_has_the_promised_schema(tiny_run: Path) -> None:
    s = json.loads((tiny_run / "summary.json").read_text())
    assert set(s["arms"]) == {"failure", "fixed"}
    for arm in s["arms"].values():
        assert arm["seeds"] == [3, 7]
        lo, hi = arm["collapse_rate_ci"]  # the 95% Wilson interval of the rate: 2 seeds say little
        assert 0.0 <= lo <= arm["collapse_rate"] <= hi <= 1.0 and hi - lo > 0.5
        for key in ("collapse_rate", "explosion_rate", "final_return_mean"):
            assert arm[key] is None or isinstance(arm[key], float), key
        assert 0.0 <= arm["collapse_rate"] <= 1.0 and 0.0 <= arm["explosion_rate"] <= 1.0
        assert len(arm["final_return_ci"]) == 2 and len(arm["runs"]) == 2
        lo, hi = arm["final_return_ci"]
        assert lo <= arm["final_return_mean"] <= hi
        for run in arm["runs"]:
            assert (tiny_run / run / "summary.json").is_file()
        # the rates are the detectors' own results, read back from each run
        fired = [json.loads((tiny_run / run / "summary.json").read_text())["collapse_step"] is not None for run in arm["runs"]]
        assert arm["collapse_rate"] == sum(fired) / len(fired)
    assert set(s["verdict"]) >= {"failure_reproduced", "fixed_cured", "criteria"}
    gif = (tiny_run / "figures" / "episode_failure.gif").read_bytes()
    assert gif[:6] in (b"GIF87a", b"GIF89a")
    assert s["episodes"]["failure"]["frames"] == 26  # reset + 25 steps of simple_spread


def test_report_only_rebuilds_identical_summary(tiny_run: Path, tmp_path: Path) -> None:
    before = (tiny_run / "summary.json").read_text()
    r = cli("reproduce", "--report-only", "--out", str(tiny_run), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tiny_run / "summary.json").read_text() == before
    assert "## Verdict" in (tiny_run / "report.md").read_text()


def test_bad_inputs_are_one_line_errors_and_touch_nothing(tiny_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    no_fixed = tiny_file(tmp_path, arms="  failure: {}\n  other: {}\n", name="no_fixed.yaml")
    cases = [
        (["reproduce", "--out", str(other), "--overwrite", "--config", str(tiny_file(tmp_path))], "not a sweep directory"),
        (["reproduce", "--out", str(tiny_run), "--config", str(tiny_file(tmp_path))], "already holds a sweep"),
        (["reproduce", "--report-only", "--out", str(other)], "no sweep plan"),
        (["reproduce", "--out", str(tmp_path / "x"), "--config", str(tmp_path / "missing.yaml")], "not found"),
        (["reproduce", "--out", str(tmp_path / "y"), "--config", str(no_fixed)], "fixed"),
        (["reproduce", "--out", str(tmp_path / "z"), "--seeds", "0"], "--seeds"),
        (["reproduce", "--resume", "--overwrite", "--out", str(tiny_run)], "exclude"),
    ]
    before = sorted((p.relative_to(tiny_run), p.stat().st_size) for p in tiny_run.rglob("*") if p.is_file())
    for args, needle in cases:
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (args, r.stderr)
    assert (other / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    after = sorted((p.relative_to(tiny_run), p.stat().st_size) for p in tiny_run.rglob("*") if p.is_file())
    assert after == before


# ---------------------------------------------------------------------------------------------- presets
SINGLE_FIXES = {
    "repeated_action_fix_clip.yaml": {"fixes.grad_clip.critic.mode": "global_norm", "fixes.grad_clip.critic.max": 1.0,
                                      "fixes.grad_clip.actor.mode": "global_norm", "fixes.grad_clip.actor.max": 1.0},
    "repeated_action_fix_obs_norm.yaml": {"fixes.obs_norm.enabled": True},
    "repeated_action_fix_tanh_scaled.yaml": {"actor.output": "tanh_scaled"},
    "repeated_action_fix_small_init.yaml": {"actor.last_layer_init": 0.003},
    "repeated_action_fix_lower_lr.yaml": {"actor_optim.lr": 0.001, "critic_optim.lr": 0.001},
    "repeated_action_fix_reward_scale.yaml": {"fixes.reward.mode": "scale", "fixes.reward.scale": 0.1},
}


def _flat(path: Path) -> dict[str, object]:
    from marl_stability.config import flatten

    return flatten(load_config(path).to_dict())


@pytest.mark.parametrize("name", sorted(SINGLE_FIXES))
def test_single_fix_presets_change_exactly_one_fix(name: str) -> None:
    failure = _flat(EXP / "repeated_action_failure.yaml")
    single = _flat(EXP / name)
    changed = {k for k, v in single.items() if failure.get(k) != v}
    expected = SINGLE_FIXES[name]
    assert {k: single[k] for k in expected} == expected
    assert changed and changed <= set(expected), changed  # nothing else differs from the failure preset
    assert (EXP / name).read_text().startswith("#"), "each preset starts with a comment saying what it shows"


def test_failure_and_fixed_presets_are_what_the_report_says() -> None:
    failure, fixed = _flat(EXP / "repeated_action_failure.yaml"), _flat(EXP / "repeated_action_fixed.yaml")
    # the failure: what a practitioner plausibly writes
    assert failure["actor.output"] == "tanh" and failure["actor_optim.lr"] == 0.01 and failure["env.reward_scale"] == 10.0
    assert failure["fixes.grad_clip.critic.mode"] == "none" and failure["fixes.obs_norm.enabled"] is False
    assert failure["actor.last_layer_init"] is None
    # the fixed preset keeps the task, the reward scale and the budget, and applies the seed practitioner's four fixes
    for key in ("env.id", "env.kwargs.N", "env.reward_scale", "train.steps", "maddpg.batch_size", "maddpg.update_every"):
        assert fixed[key] == failure[key], key
    assert fixed["actor.output"] == "tanh_scaled" and fixed["actor.last_layer_init"] == 0.003
    assert fixed["fixes.obs_norm.enabled"] is True and fixed["fixes.grad_clip.critic.mode"] == "global_norm"
    plan = make_plan(EXP / "reproduce.yaml", probe=False)
    assert [a.name for a in plan.arms] == ["failure", "fixed", "heal"] and plan.reference == "failure"
    # the third arm is the failure preset with train.heal on, nothing else
    heal, fail = flatten(plan.arm("heal").config), flatten(plan.arm("failure").config)
    assert {k for k in heal if heal[k] != fail.get(k)} == {"train.heal.enabled"}


def test_quick_overrides_apply_to_both_arms() -> None:
    plan = make_plan(EXP / "reproduce.yaml", seeds=1, probe=False, extra=reproduce.QUICK)
    for arm in plan.arms:
        assert arm.config["train"]["steps"] == reproduce.QUICK["train.steps"]
        assert arm.config["maddpg"]["warmup_steps"] == reproduce.QUICK["maddpg.warmup_steps"]


def test_post_collapse_gain() -> None:
    hist = [(1000, -80.0), (2000, -70.0), (3000, -75.0), (4000, -72.0), (5000, -71.0), (6000, -76.0), (7000, -74.0),
            (8000, -60.0)]
    # from onset 2000: seven evaluations; first three mean -72.33, last three mean -70.0 (the middle one left out)
    assert reproduce._post_collapse(hist, 2000) == pytest.approx(-70.0 + 217 / 3)
    # from onset 5000: four evaluations, halves -73.5 -> -67.0
    assert reproduce._post_collapse(hist, 5000) == pytest.approx(6.5)
    assert reproduce._post_collapse(hist, 8000) is None  # one evaluation: no trend to judge


def test_a_heal_arm_is_reported_with_its_heals_and_marked_on_the_figures(tmp_path: Path) -> None:
    """A third arm named ``heal`` (here: NaN injected once, so a heal acts in every seed) gets its verdict, a line
    per heal and the rollbacks drawn on the return and gradient figures."""
    arms = ("  failure: {}\n  fixed: {config: " + str(EXP / "repeated_action_fixed.yaml") + "}\n"
            "  heal: {train.heal.enabled: true, train.heal.snapshot_every: 5, debug.inject_nonfinite_at_update: 20, "
            "debug.inject_nonfinite_count: 1}\n")
    out = tmp_path / "out"
    r = cli("reproduce", "--config", str(tiny_file(tmp_path, arms=arms)), "--out", str(out), "--workers", "2",
            "--seeds", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    heal = s["verdict"]["heal"]
    assert heal["runs_healed"] == 1 and heal["runs"] == 1 and heal["env_steps_lost"][0] > 0
    [heals] = s["arms"]["heal"]["healing"]  # the injected NaN first (the tiny run may collapse later as well)
    h = heals[0]
    assert h["trigger"] == "nonfinite" and h["fix"] and "healing" not in s["arms"]["failure"]
    report = (out / "report.md").read_text()
    assert "**Failure + heal: " in report and f"nonfinite at {h['alarm_step']} -> {h['rolled_back_to']}" in report
    assert "train.heal on" in report and (out / "figures" / "return.png").is_file()
    import matplotlib.pyplot as plt  # the figures carry the heal marks (legend entries)
    from marl_stability.studies.reproduce import _mark_heals, build_reproduction_report  # noqa: F401

    fig, ax = plt.subplots()
    results = {"heal": reproduce.arm_result("heal", "?", reproduce._load_runs(out, reproduce.collect(out))["heal"], [])}
    _mark_heals(ax, results, label=True)
    assert [t.get_text() for t in ax.legend().get_texts()] == [f"heal alarms ({len(heals)})", "rolled back to"]
    plt.close(fig)
