"""End-to-end training: run files and tags, determinism, exact resume after kill -9, divergence handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from marl_stability.config import load_config
from marl_stability.core.sinks import MemorySink
from marl_stability.training.trainer import TIMING_KEYS, Trainer
from scalar_files import assert_scalar_file_exact

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "maddpg_spread.yaml"

# A few thousand env steps with frequent small updates: seconds, yet every code path runs
# (warm-up, updates, evaluation, checkpoints, histograms).
TINY = [
    "maddpg.warmup_steps=300",
    "maddpg.batch_size=64",
    "maddpg.update_every=10",
    "train.eval_every=500",
    "train.eval_episodes=2",
    "train.checkpoint_every=500",
    "train.histogram_every=5",
    "train.log_every=1",
    "env.num_envs=2",
]


def tiny_config(steps: int = 1500, extra: list[str] | None = None):
    return load_config(PRESET, TINY + [f"train.steps={steps}"] + (extra or []))


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}


def read_tags(run_dir: Path) -> tuple[set[str], set[str], bool]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    has_hparams = "hparams" in acc.PluginTagToContent("hparams") or bool(acc.PluginTagToContent("hparams"))
    return set(tags["scalars"]), set(tags["histograms"]), has_hparams


def test_run_writes_files_tags_and_summary(tmp_path: Path) -> None:
    run = tmp_path / "spread"
    summary = Trainer(tiny_config(), run, quiet=True).run()
    # train.checkpoints=final (the default): the finished run keeps final.pt only, without the replay buffer
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "final.pt").is_file()
    assert not (run / "checkpoints" / "last.pt").exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["steps"] == 1500 and saved["fixes"]["obs_norm"]["enabled"] is True
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == summary
    for key in ("status", "env", "algo", "seed", "fixes", "env_steps", "updates", "final_return", "best_return",
                "max_grad_norm", "nonfinite_events", "wall_seconds", "env_steps_per_second"):
        assert key in summary, key
    assert summary["status"] == "completed" and summary["env_steps"] == 1500
    # updates start after 300 warm-up steps, one per 10 env steps: (1500 - 300) / 10 = 120 (+-1 at the edge)
    assert 118 <= summary["updates"] <= 121
    assert summary["fixes"]["grad_clip.critic.mode"] == "global_norm"
    assert summary["max_grad_norm"]["critic"] > 0 and summary["max_grad_norm"]["actor"] > 0
    assert summary["best_return"] >= summary["final_return"]
    for key in ("explosion_step", "collapse_step", "nonfinite_step"):
        assert key in summary
    assert summary["nonfinite_step"] is None
    assert 0.0 <= summary["repeated_action_rate"] <= 1.0 and 0.0 <= summary["saturation_rate"] <= 1.0
    assert summary["action_sensitivity"] > 0  # a freshly trained tanh actor still depends on its input
    assert set(summary["action_stats"]) == {"agent_0", "agent_1", "agent_2"}
    assert [e["env_steps"] for e in summary["eval_history"]] == [500, 1000, 1500]
    scalars, histograms, has_hparams = read_tags(run)
    for tag in ("rollout/team_return", "rollout/length", "eval/team_return", "loss/critic/agent_0",
                "loss/actor/agent_2", "grad_norm/critic/agent_1", "grad_norm/actor/agent_0",
                "optim/grad_norm_postclip/critic/agent_0", "q/mean/agent_0", "perf/env_steps_per_second",
                "rollout/agent_return/agent_0", "eval/agent_return/agent_1", "eval/repeat_rate/agent_0",
                "eval/saturation/agent_1", "eval/sensitivity/agent_2", "eval/batch_same_action/agent_0",
                "q/td_error_mean/agent_0", "q/dq_da_norm/agent_0", "q/max/agent_1",
                "layers/grad_norm/critic/agent_0/mlp.out.weight", "layers/weight_norm/actor/agent_1/mlp.hidden.0.linear.bias",
                "optim/update_ratio/actor/agent_0", "layers/update_ratio/critic/agent_2/mlp.out.weight",
                "optim/clip_fraction/critic/agent_0", "optim/clip_active/actor/agent_0", "q/overestimation/agent_0",
                "q/initial/agent_1", "q/mc_return/agent_2", "eval/preact_max_abs/agent_0",
                "reward/raw_batch_std/agent_0", "reward/learner_batch_std/agent_0"):
        assert tag in scalars, tag
    assert {"hist/train_actions/agent_0", "hist/train_actions/agent_1", "hist/train_actions/agent_2"} <= histograms
    assert {"hist/eval_actions/agent_0/dim0", "hist/eval_actions/agent_2/dim4", "hist/eval_preact/agent_1"} <= histograms
    assert has_hparams
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    assert "custom_scalars" in acc.PluginTagToContent("custom_scalars") or acc.PluginTagToContent("custom_scalars")
    # every dashboard chart matches at least one logged tag
    import re

    from marl_stability.hooks.control import DASHBOARD

    for category, charts in DASHBOARD.items():
        for title, (_, patterns) in charts.items():
            assert any(re.fullmatch(pat, tag) for pat in patterns for tag in scalars), (category, title)


def test_heterogeneous_discrete_task(tmp_path: Path) -> None:
    cfg = tiny_config(1000, ["env.id=simple_speaker_listener_v4", "env.kwargs={continuous_actions: false, max_cycles: 25}",
                              "actor.output=auto"])
    memory = MemorySink()
    summary = Trainer(cfg, tmp_path / "sl", quiet=True, extra_sinks=[memory]).run()
    assert summary["status"] == "completed" and summary["agents"] == ["speaker_0", "listener_0"]
    assert "loss/critic/listener_0" in memory.scalars and "grad_norm/actor/speaker_0" in memory.scalars
    # Discrete actions are stored one-hot: every histogram sample is 0 or 1.
    acts = memory.histograms["hist/train_actions/listener_0"][-1][1]
    assert acts.shape[1] == 5 and set(acts.ravel().tolist()) <= {0.0, 1.0}
    assert (acts.sum(axis=1) == 1).all()


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path: Path) -> None:
    sinks = [MemorySink(), MemorySink(), MemorySink()]
    runs = [
        Trainer(tiny_config(1000), tmp_path / "a", quiet=True, extra_sinks=[sinks[0]]).run(),
        Trainer(tiny_config(1000), tmp_path / "b", quiet=True, extra_sinks=[sinks[1]]).run(),
        Trainer(tiny_config(1000, ["seed=1"]), tmp_path / "c", quiet=True, extra_sinks=[sinks[2]]).run(),
    ]
    assert without_timing(runs[0]) == without_timing(runs[1])
    tag = "loss/critic/agent_0"
    assert sinks[0].scalars[tag] == sinks[1].scalars[tag] and len(sinks[0].scalars[tag]) > 50
    assert sinks[0].scalars[tag] != sinks[2].scalars[tag]
    assert runs[0]["final_return"] != runs[2]["final_return"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "marl_stability", *args]


def test_resume_after_kill_9_is_exact(tmp_path: Path) -> None:
    args = ["train", "--config", str(PRESET), "--logdir", str(tmp_path), "--quiet", "--steps", "6000"]
    for item in TINY:
        args += ["--set", item]
    reference = Trainer(load_config(PRESET, TINY + ["train.steps=6000"]), tmp_path / "ref", quiet=True).run()

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli(*args, "--name", "killed"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # let it run past the checkpoint so the resumed run really repeats work
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed: enlarge it"
    assert ckpt.exists() and not (run / "summary.json").exists()

    done = subprocess.run(_cli(*args, "--name", "killed", "--resume"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["status"] == "completed"
    assert without_timing(resumed) == without_timing(reference)
    assert_scalar_file_exact(run, tmp_path / "ref")  # the columnar file continues from the checkpoint too


def test_injected_nan_ends_run_diverged_cleanly(tmp_path: Path) -> None:
    run = tmp_path / "nan"
    args = ["train", "--config", str(PRESET), "--logdir", str(tmp_path), "--name", "nan", "--quiet", "--steps", "3000",
            "--set", "debug.inject_nonfinite_at_update=20", "--set", "train.max_nonfinite=5"]
    for item in TINY:
        args += ["--set", item]
    out = subprocess.run(_cli(*args), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # divergence is an experimental outcome, not an error
    assert "Traceback" not in out.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["nonfinite_events"] >= 5
    # stopped soon after the injection at update 20: NaN critic losses skip one step per agent per update
    assert summary["updates"] < 25 and summary["env_steps"] < 3000
    scalars, _, _ = read_tags(run)
    assert "health/nonfinite_updates" in scalars  # the event file was flushed at the end


def test_overflowing_parameters_end_run_diverged(tmp_path: Path) -> None:
    """Finite-but-huge gradients under plain SGD overflow the weights: caught, not crashed, no NaN action sent."""
    cfg = tiny_config(3000, ["critic_optim.name=sgd", "critic_optim.lr=10", "actor_optim.name=sgd",
                             "actor_optim.lr=10", "env.reward_scale=1e30", "fixes.grad_clip.critic.mode=none",
                             "fixes.grad_clip.actor.mode=none", "fixes.obs_norm.enabled=false"])
    summary = Trainer(cfg, tmp_path / "boom", quiet=True).run()
    assert summary["status"] == "diverged"
    assert summary["nonfinite_events"] >= 1
    assert summary["env_steps"] < 3000


def test_nonfinite_writes_forensics_and_rollback_recovers(tmp_path: Path) -> None:
    run = tmp_path / "rb"
    cfg = tiny_config(2000, ["debug.inject_nonfinite_at_update=40", "debug.inject_nonfinite_count=1",
                             "train.on_nonfinite=rollback", "train.snapshot_every=10"])
    memory = MemorySink()
    summary = Trainer(cfg, run, quiet=True, extra_sinks=[memory]).run()
    assert summary["status"] == "completed"
    assert summary["rollbacks"] == 1 and summary["nonfinite_events"] == 3  # one NaN critic loss per agent
    assert summary["nonfinite_step"] is not None and 0 < summary["nonfinite_step"] < 2000
    event = json.loads((run / "forensics" / "event.json").read_text())
    assert event["update"] == 40 and event["model"] == "critic/agent_0" and event["what"] == "loss"
    recent = json.loads((run / "forensics" / "recent_metrics.json").read_text())
    assert [r["update"] for r in recent][-1] == 40 and len(recent) == 40  # history up to the bad update
    assert recent[-1]["health/nonfinite_updates"] == 3
    import torch
    bundle = torch.load(run / "forensics" / "bundle.pt", weights_only=True)
    assert bundle["batch"]["obs"].shape == (64, 3, 18)
    assert "critic/agent_0/mlp.out.weight" in bundle["parameters"]
    assert (run / "forensics" / "config.yaml").is_file()
    assert any("rolled back" in t for _, t in memory.texts["health/events"])


def test_nonfinite_stop_mode_writes_forensics_and_diverges(tmp_path: Path) -> None:
    run = tmp_path / "stop"
    cfg = tiny_config(2000, ["debug.inject_nonfinite_at_update=10", "train.max_nonfinite=3"])
    summary = Trainer(cfg, run, quiet=True).run()
    assert summary["status"] == "diverged" and summary["rollbacks"] == 0
    assert summary["nonfinite_events"] == 3 and summary["updates"] == 10  # 3 agents' critic losses in update 10
    assert json.loads((run / "forensics" / "event.json").read_text())["update"] == 10


def test_unbounded_box_actions_are_refused_up_front() -> None:
    import numpy as np
    from marl_stability.envs import AgentLayout

    from marl_stability.errors import UserError
    from marl_stability.training.trainer import check_compatible

    layout = AgentLayout(agents=("a", "b"), obs_dims=(3, 3), act_dims=(2, 2), discrete=(False, False),
                         act_low=np.array([[0, 0], [-np.inf, 0]], np.float32), act_high=np.ones((2, 2), np.float32))
    with pytest.raises(UserError, match="agents b .* unbounded Box actions"):
        check_compatible(tiny_config(), layout)


def test_resume_keeps_the_evaluation_logged_at_the_checkpoint_step(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "r"
    keep = ["train.checkpoints=resume"]  # a finished run keeps what a resume needs only when asked to
    Trainer(tiny_config(1000, keep), run, quiet=True).run()  # evaluations at 500 and 1000, checkpoint at 1000
    Trainer(tiny_config(1500, keep), run, quiet=True).run(resume=True)  # extend the same run to 1500
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/team_return")] == [500, 1000, 1500]


def test_checkpoint_policies_keep_what_each_promises(tmp_path: Path) -> None:
    """final (default): final.pt without the replay buffer, acting exactly as the full checkpoint does; resume:
    the full last.pt stays; none: no checkpoint at all. The summary is the same under all three."""
    import numpy as np
    import torch

    from marl_stability.studies.reproduce import load_policy

    summaries, dirs = {}, {}
    for mode in ("final", "resume", "none"):
        dirs[mode] = tmp_path / mode
        summaries[mode] = without_timing(Trainer(tiny_config(1500, [f"train.checkpoints={mode}"]), dirs[mode],
                                                 quiet=True).run())
    assert summaries["final"] == summaries["resume"] == summaries["none"]
    ckpts = {m: sorted(p.name for p in (d / "checkpoints").glob("*")) if (d / "checkpoints").exists() else []
             for m, d in dirs.items()}
    assert ckpts == {"final": ["final.pt"], "resume": ["last.pt"], "none": []}
    final = torch.load(dirs["final"] / "checkpoints" / "final.pt", weights_only=True)
    full = torch.load(dirs["resume"] / "checkpoints" / "last.pt", weights_only=True)
    assert final["kind"] == "final" and "buffer" not in final["algo"] and full["algo"]["buffer"]["size"] == 1500
    assert (dirs["final"] / "checkpoints" / "final.pt").stat().st_size < (dirs["resume"] / "checkpoints" / "last.pt").stat().st_size
    obs = np.random.default_rng(0).normal(size=(4, 3, 18)).astype(np.float32)
    acts = [load_policy(dirs[m])[1].act(obs, explore=False) for m in ("final", "resume")]
    np.testing.assert_array_equal(acts[0], acts[1])


def test_a_diverged_run_keeps_its_last_state_before_the_divergence(tmp_path: Path) -> None:
    import torch

    cfg = tiny_config(3000, ["debug.inject_nonfinite_at_update=100", "train.max_nonfinite=3"])
    summary = Trainer(cfg, tmp_path / "nan", quiet=True).run()
    assert summary["status"] == "diverged" and summary["env_steps"] > 1000  # past the checkpoint at 1000
    assert sorted(p.name for p in (tmp_path / "nan" / "checkpoints").iterdir()) == ["final.pt"]
    final = torch.load(tmp_path / "nan" / "checkpoints" / "final.pt", weights_only=True)
    assert final["progress"]["env_steps"] == 1000 and "buffer" not in final["algo"]
    assert all(torch.isfinite(t).all() for a in final["algo"]["actors"] for t in a.values())


def test_a_stale_resume_checkpoint_goes_when_a_run_ends_without_one(tmp_path: Path) -> None:
    """A run trained with checkpoints=resume, then continued under checkpoints=none: the old last.pt would roll a later
    --resume back to the earlier state, so it is removed once the run's summary is written."""
    run = tmp_path / "r"
    Trainer(tiny_config(1000, ["train.checkpoints=resume"]), run, quiet=True).run()
    assert (run / "checkpoints" / "last.pt").is_file()
    summary = Trainer(tiny_config(1500, ["train.checkpoints=none"]), run, quiet=True).run(resume=True)
    assert summary["status"] == "completed" and summary["env_steps"] == 1500
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "checkpoints" / "final.pt").exists()
