"""MATD3: twin critics with the min target, clipped target-policy smoothing, delayed actor and target updates;
the stacked update equals the per-agent loop; runs, determinism and exact resume through the same loop."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from marl_stability.agents.ddpg_updates import PerAgentUpdate
from test_batched import (
    DISCRETE_SPEC,
    NUM_ENVS,
    SPEC,
    _assert_same_networks,
    _assert_same_stats,
    _fill,
)

from marl_stability import agents
from marl_stability.config import RunConfig, load_config
from marl_stability.core.sinks import MemorySink
from marl_stability.fixes.objects import build_fixes
from marl_stability.training.trainer import TIMING_KEYS, Trainer
from scalar_files import assert_scalar_file_exact

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "matd3_spread.yaml"
TINY = ["maddpg.warmup_steps=300", "maddpg.batch_size=64", "maddpg.update_every=10", "train.eval_every=500",
        "train.eval_episodes=2", "train.checkpoint_every=500", "train.histogram_every=5", "train.log_every=1",
        "env.num_envs=2", "actor.hidden_sizes=[32,32]", "critic.hidden_sizes=[32,32]", "train.torch_threads=1"]


def _matd3(spec=SPEC, batched: str = "off", **matd3):  # type: ignore[no-untyped-def]
    cfg = RunConfig.model_validate({
        "algo": "matd3", "actor": {"hidden_sizes": [16, 16]}, "critic": {"hidden_sizes": [16, 16]},
        "maddpg": {"batch_size": 64, "warmup_steps": 0, "update_every": 1, "buffer_size": 1000,
                   "batched_agents": batched},
        "matd3": matd3})
    fixes = build_fixes(cfg.fixes, NUM_ENVS, spec.num_agents, spec.max_obs_dim, cfg.maddpg.gamma)
    return agents.make(cfg, spec, fixes)


def _params(modules) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_twin_critics_are_independent_networks_stepped_together() -> None:
    algo = _matd3()
    assert len(algo.critic_groups) == 2 and algo.num_critics == 2
    q1, q2 = algo.critic_groups[0][0], algo.critic_groups[1][0]
    assert not torch.equal(q1.mlp.out.weight, q2.mlp.out.weight)  # separately initialized
    unit = algo.modules()["critic/a"]  # one network for the optimizer, the clip and the gradient statistics
    assert {id(p) for p in unit.parameters()} == {id(p) for p in [*q1.parameters(), *q2.parameters()]}
    _fill(algo)
    before = _params([q1, q2])
    stats = algo.update().scalars
    after = _params([q1, q2])
    n1 = len(list(q1.parameters()))
    assert not _same(before[:n1], after[:n1]) and not _same(before[n1:], after[n1:])  # both regressed
    assert stats["q/twin_gap/a"] > 0


def test_td_target_is_the_min_of_the_target_critics() -> None:
    algo = _matd3(target_noise=0.0)
    _fill(algo)
    rng_state = algo.rng.bit_generator.state
    b = algo.buffer.sample(algo.hp.batch_size, algo.rng)  # the batch update() will draw
    algo.rng.bit_generator.state = rng_state
    with torch.no_grad():
        nxt = algo.fixes.obs(b["next_obs"])
        joint_next = torch.cat([nxt[:, i] for i in range(3)], dim=-1)
        acts = torch.cat([algo.target_actors[i](nxt[:, i])[0] for i in range(3)], dim=-1)
        q1 = algo.target_critic_groups[0][0](joint_next, acts)
        q2 = algo.target_critic_groups[1][0](joint_next, acts)
        y = b["rew"][:, 0] + algo.hp.gamma * (1 - b["term"][:, 0]) * torch.minimum(q1, q2)
    assert not torch.equal(q1, q2)
    stats = algo.update().scalars
    assert stats["q/target_mean/a"] == pytest.approx(float(y.mean()), rel=1e-6)


def test_actor_and_targets_move_every_policy_delay_updates() -> None:
    algo = _matd3(policy_delay=2)
    _fill(algo)
    actors, targets = _params(algo.actors), _params(algo.target_actors + algo.target_critics)
    s1 = algo.update().scalars  # update 1: critics only
    assert _same(actors, _params(algo.actors)) and _same(targets, _params(algo.target_actors + algo.target_critics))
    assert "loss/actor/a" not in s1 and "loss/critic/a" in s1
    s2 = algo.update().scalars  # update 2: actors and every target
    assert not _same(actors, _params(algo.actors))
    assert not _same(targets, _params(algo.target_actors + algo.target_critics))
    assert math.isfinite(s2["loss/actor/a"])


def test_target_smoothing_noise_is_clipped() -> None:
    algo = _matd3(target_noise=5.0, target_noise_clip=0.25)  # huge noise: the clip decides
    a = torch.full((4096, 2), 0.5)
    smoothed = algo.smooth_target(0, a)
    assert (smoothed - a).abs().max() <= 0.25 + 1e-6 and (smoothed - a).abs().max() > 0.24
    assert torch.equal(_matd3(target_noise=0.0).smooth_target(0, a), a)
    # Discrete agents' target actions are one-hot: no smoothing.
    d = _matd3(DISCRETE_SPEC)
    one_hot = torch.eye(3)[[0, 1, 2, 0]]
    assert torch.equal(d.smooth_target(0, one_hot), one_hot)


@pytest.mark.parametrize("spec", [SPEC, DISCRETE_SPEC], ids=["continuous", "discrete"])
def test_stacked_matd3_equals_the_per_agent_loop(spec) -> None:  # type: ignore[no-untyped-def]
    on, off = _matd3(spec, "on"), _matd3(spec, "off")
    assert on.batched and isinstance(off.strategy, PerAgentUpdate)
    _fill(on)
    off.load_state_dict(on.state_dict())
    for _ in range(4):  # two delayed actor updates, smoothing noise from the same random stream
        _assert_same_stats(on.update().scalars, off.update().scalars)
        _assert_same_networks(on, off)
    for group in ("critics2", "target_critics2"):
        for m_on, m_off in zip(getattr(on, "critic_groups" if group == "critics2" else "target_critic_groups")[1],
                               getattr(off, "critic_groups" if group == "critics2" else "target_critic_groups")[1]):
            for p, q in zip(m_on.parameters(), m_off.parameters()):
                assert torch.allclose(p, q, atol=1e-5)


def _tiny(steps: int, extra: list[str] | None = None):  # type: ignore[no-untyped-def]
    return load_config(PRESET, TINY + [f"train.steps={steps}"] + (extra or []))


def test_matd3_run_tags_and_determinism(tmp_path: Path) -> None:
    sinks = [MemorySink(), MemorySink()]
    runs = [Trainer(_tiny(1000), tmp_path / f"r{i}", quiet=True, extra_sinks=[sinks[i]]).run() for i in range(2)]
    s = runs[0]
    assert s["status"] == "completed" and s["algo"] == "matd3"
    assert {k: v for k, v in runs[0].items() if k not in TIMING_KEYS} == {
        k: v for k, v in runs[1].items() if k not in TIMING_KEYS}
    mem = sinks[0]
    assert mem.scalars["q/twin_gap/agent_0"] == sinks[1].scalars["q/twin_gap/agent_0"]
    # Actor statistics only on actor updates (every 2nd); critics every update.
    assert len(mem.scalars["grad_norm/actor/agent_0"]) == s["updates"] // 2
    assert len(mem.scalars["grad_norm/critic/agent_0"]) == s["updates"]
    for tag in ("layers/grad_norm/critic/agent_1/q.1.mlp.out.weight", "eval/saturation/agent_2",
                "q/overestimation/agent_0"):
        assert tag in mem.scalars, tag


def test_set_algo_matd3_works_on_any_preset(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "experiments" / "repeated_action_failure.yaml",
                      ["algo=matd3", "train.steps=600", "maddpg.warmup_steps=200", "maddpg.batch_size=64",
                       "train.eval_every=300", "train.eval_episodes=2", "env.num_envs=4"])
    summary = Trainer(cfg, tmp_path / "f", quiet=True).run()
    assert summary["status"] == "completed" and summary["algo"] == "matd3" and summary["updates"] > 0


def test_matd3_discrete_heterogeneous_task(tmp_path: Path) -> None:
    cfg = _tiny(800, ["env.id=simple_speaker_listener_v4", "env.kwargs={continuous_actions: false, max_cycles: 25}",
                      "actor.output=auto"])
    summary = Trainer(cfg, tmp_path / "sl", quiet=True).run()
    assert summary["status"] == "completed" and summary["agents"] == ["speaker_0", "listener_0"]


def test_matd3_resume_after_kill_9_is_exact(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "marl_stability", "train", "--config", str(PRESET), "--logdir", str(tmp_path),
            "--quiet", "--steps", "5000"]
    for item in TINY:
        args += ["--set", item]
    reference = Trainer(_tiny(5000), tmp_path / "ref", quiet=True).run()
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args + ["--name", "killed"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed: enlarge it"
    done = subprocess.run(args + ["--name", "killed", "--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["status"] == "completed"
    assert {k: v for k, v in resumed.items() if k not in TIMING_KEYS} == {
        k: v for k, v in reference.items() if k not in TIMING_KEYS}
    assert_scalar_file_exact(run, tmp_path / "ref")
