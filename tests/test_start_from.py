"""train.keep_checkpoints and train.start_from: a run keeps its periodic checkpoints, another run starts from one
of them (its learner, replay buffer and counters; its own random streams), and cure starts its trials there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from marl_stability.config import load_config
from marl_stability.core.checkpoint import final_checkpoint, history_checkpoints, load_checkpoint
from marl_stability.errors import UserError
from marl_stability.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
MADDPG = ROOT / "experiments" / "maddpg_spread.yaml"
MAPPO = ROOT / "experiments" / "mappo_spread.yaml"
TINY = ["maddpg.warmup_steps=300", "maddpg.batch_size=64", "maddpg.update_every=10", "train.eval_every=500",
        "train.eval_episodes=2", "train.checkpoint_every=500", "env.num_envs=2"]
TINY_PPO = ["env.num_envs=4", "ppo.rollout_steps=10", "ppo.epochs=2", "ppo.minibatches=2", "train.eval_every=200",
            "train.eval_episodes=2", "train.checkpoint_every=200"]


def cfg(steps: int, extra: list[str] = (), preset: Path = MADDPG):  # type: ignore[no-untyped-def]
    return load_config(preset, [*(TINY_PPO if preset == MAPPO else TINY), f"train.steps={steps}", *extra])


def same(a: object, b: object) -> bool:
    """Equal state: tensors bit for bit, containers item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("start") / "source"
    summary = Trainer(cfg(1500, ["train.keep_checkpoints=2"]), run, quiet=True).run()
    assert summary["status"] == "completed"
    return run


def test_keep_checkpoints_keeps_the_newest_periodic_ones_with_the_replay_buffer(source: Path) -> None:
    kept = history_checkpoints(source)
    assert [step for step, _ in kept] == [1000, 1500]  # every 500 env steps, the newest 2
    state = load_checkpoint(kept[0][1])
    assert state["kind"] == "history" and state["progress"]["env_steps"] == 1000
    assert state["algo"]["buffer"]["size"] == 1000 and "env" not in state  # the buffer; no env copies or hooks
    assert final_checkpoint(source).is_file()  # the run's own checkpoints are as before


def test_a_run_started_from_a_checkpoint_continues_its_learner_with_its_own_seed(source: Path, tmp_path: Path) -> None:
    start = dict(history_checkpoints(source))[1000]
    ckpt = load_checkpoint(start)
    # the learner right after the start: the checkpoint's networks, targets, optimizers, normalizers and buffer
    trainer = Trainer(cfg(1500, [f"train.start_from={start}"]), tmp_path / "same", quiet=True)
    trainer._begin(resume=False)
    loaded = trainer.algo.state_dict()
    for key in ("actors", "critics", "target_actors", "target_critics", "actor_opts", "critic_opts"):
        assert same(loaded[key], ckpt["algo"][key]), key
    assert same(loaded["buffer"], ckpt["algo"]["buffer"]) and same(loaded["obs_norm"], ckpt["algo"]["obs_norm"])
    assert trainer.progress.env_steps == 1000 and trainer.progress.eval_history == ckpt["progress"]["eval_history"]
    trainer.venv.close()
    trainer.logger.close()
    before = {"updates": ckpt["algo"]["counters"]["updates"],
            "eval_history": json.loads((source / "summary.json").read_text())["eval_history"][:2]}
    # continued with a fix a running run can take, under two seeds: the fix is on, the seeds differ
    runs = {}
    for seed in (1, 2):
        runs[seed] = Trainer(cfg(1500, [f"train.start_from={start}", f"seed={seed}", "actor_optim.lr=0.0005"]),
                             tmp_path / f"s{seed}", quiet=True).run()
        final = load_checkpoint(final_checkpoint(tmp_path / f"s{seed}"))
        assert final["algo"]["actor_opts"][0]["param_groups"][0]["lr"] == 0.0005
        assert runs[seed]["env_steps"] == 1500 and runs[seed]["updates"] > before["updates"]
        assert runs[seed]["eval_history"][:2] == before["eval_history"]
    assert runs[1]["final_return"] != runs[2]["final_return"]  # each seed its own exploration and env resets
    # a started run resumes like any other: kept going from its own checkpoint, it keeps where it started
    extended = Trainer(cfg(2000, [f"train.start_from={start}", "seed=1", "actor_optim.lr=0.0005",
                                  "train.checkpoints=resume"]), tmp_path / "r", quiet=True)
    first = extended.run()
    again = Trainer(cfg(2500, [f"train.start_from={start}", "seed=1", "actor_optim.lr=0.0005",
                               "train.checkpoints=resume"]), tmp_path / "r", quiet=True).run(resume=True)
    assert first["env_steps"] == 2000 and again["env_steps"] == 2500 and again["updates"] > first["updates"]
    assert again["started_from"] == first["started_from"] == {"checkpoint": str(start), "env_steps": 1000}


@pytest.mark.parametrize("extra, message", [
    (["actor.norm=layernorm"], "MADDPG cannot change actor.norm in a running run"),
    (["env.num_envs=4"], "MADDPG cannot change env.num_envs"),
])
def test_a_change_a_running_run_cannot_take_is_refused_before_anything_is_written(
        source: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    start = dict(history_checkpoints(source))[1000]
    with pytest.raises(UserError, match=message):
        Trainer(cfg(1500, [f"train.start_from={start}", *extra]), tmp_path / "refused", quiet=True).run()
    assert not (tmp_path / "refused").exists()


def test_bad_start_points_are_one_line_errors(source: Path, tmp_path: Path) -> None:
    start = dict(history_checkpoints(source))[1000]
    cases = [(final_checkpoint(source), [], "has no buffer (a finished run's final checkpoint)"),
             (tmp_path / "missing.pt", [], "no checkpoint at"),
             (source / "config.yaml", [], "corrupt or not a marl-stability checkpoint"),
             (start, ["--steps", "1000"], "train.steps 1000 leaves nothing to train after the checkpoint's env step 1000"),
             (start, ["--set", "train.heal.enabled=true"], "heal.enabled with start_from")]
    for path, extra, message in cases:
        r = subprocess.run([sys.executable, "-m", "marl_stability", "train", "-c", str(MADDPG), "--steps", "1500",
                            "--quiet", "--logdir", str(tmp_path), "--name", "bad", *[a for s in TINY for a in ("--set", s)],
                            "--set", f"train.start_from={path}", *extra], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_mappo_starts_from_a_checkpoint_without_the_rollout_in_progress(tmp_path: Path) -> None:
    src = tmp_path / "src"
    Trainer(cfg(600, ["train.keep_checkpoints=1", "train.checkpoint_every=250"], MAPPO), src, quiet=True).run()
    [(step, start)] = history_checkpoints(src)
    assert step == 500 and load_checkpoint(start)["algo"]["rollout"]["ptr"] == 5  # mid-rollout (4 envs x 10 steps)
    summary = Trainer(cfg(1000, [f"train.start_from={start}", "seed=3", "ppo.log_std_bounds=[-2.0, 0.5]"], MAPPO),
                      tmp_path / "b", quiet=True).run()
    assert summary["status"] == "completed" and summary["fixes"]["ppo.log_std_bounds"] == [-2.0, 0.5]
    # the first update after the start comes one whole rollout (40 env steps) after it: the old rollout was dropped
    assert summary["updates"] - load_checkpoint(start)["algo"]["counters"]["updates"] == (1000 - 500) // 40  # 13 with the old rollout kept


def test_cure_starts_its_trials_from_the_last_checkpoint_before_the_onset(tmp_path: Path) -> None:
    from agents import MADDPG as MADDPG_CLS
    from marl_stability.fixes import registry
    from marl_stability.studies.cure import _live, start_point

    sets = ["maddpg.warmup_steps=200", "maddpg.batch_size=32", "maddpg.update_every=10", "train.eval_every=200",
            "train.eval_episodes=2", "env.num_envs=2", "train.checkpoint_every=200", "train.keep_checkpoints=4"]
    args = [sys.executable, "-m", "marl_stability", "train", "-c", str(ROOT / "experiments" / "repeated_action_failure.yaml"),
            "--steps", "1200", "--quiet", "--logdir", str(tmp_path), "--name", "failed", *[a for s in sets for a in ("--set", s)]]
    assert subprocess.run(args, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    run = tmp_path / "failed"
    r = subprocess.run([sys.executable, "-m", "marl_stability", "cure", str(run), "--top", "2", "--seeds", "2",
                        "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads((run / "cure" / "cure.json").read_text())
    onset, start = result["onset"], result["start"]
    assert start["env_steps"] == start_point(run, onset)[0] < onset and start["env_steps"] % 200 == 0
    # doctor's first two for saturation-first: the lower learning rate starts there; reward normalization from step 0
    # (a normalizer switched on at the checkpoint would start without the statistics it has from step 0)
    assert [(row["arm"], row["from_step"]) for row in result["fixes"]] == [("lower_lr", start["env_steps"]), ("reward_scale", 0)]
    trials = sorted((run / "cure" / "runs").glob("*/*/summary.json"))
    assert len(trials) == 6  # control and two fixes, two seeds each
    for trial in trials:
        s = json.loads(trial.read_text())
        assert s["env_steps"] == result["budget"]
        assert s.get("started_from", {}).get("env_steps", 0) == (0 if "reward_scale" in str(trial) else start["env_steps"])
    assert f"| control | the run's config | {start['env_steps']:,} |" in (run / "cure" / "cure.md").read_text()
    # a fix that changes the network starts from step 0
    fix = registry.get
    assert _live(MADDPG_CLS, fix("lower_lr"), ["actor_optim.lr=0.001"])
    assert not _live(MADDPG_CLS, fix("norm_layers"), ["actor.norm=layernorm"])
    assert not _live(MADDPG_CLS, fix("reward_scale"), ["fixes.reward.mode=normalize"])
    assert start_point(run, None) is None and start_point(run, 200) is None  # no checkpoint strictly before step 200
    # keep 4: the collapse confirmed at 800 (three evaluations from its onset at 400) pinned 200, 400 and 600
    assert [s for s, _ in history_checkpoints(run)][:3] == [200, 400, 600] and onset == 400


def test_history_keeps_the_checkpoints_from_before_the_first_alarm(tmp_path: Path) -> None:
    from marl_stability.core.checkpoint import keep_history

    state = {"format": 2, "algo": {}}
    for step in (100, 200, 300, 400, 500, 600, 700):
        keep_history(tmp_path, state, step, 2, alarmed=step >= 400)
    # the 2 there when the alarm was first seen stay for good, and the newest 2 after it
    assert [s for s, _ in history_checkpoints(tmp_path)] == [200, 300, 600, 700]
