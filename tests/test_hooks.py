"""The hook layer: one owner per tag, claims checked at start-up, users' hooks from config and code, and an
on-policy algorithm (rollouts, epochs, no replay) running through the same loop as MADDPG."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from marl_stability.agents.base import Algorithm
from marl_stability.agents.optim import make_optimizer

from marl_stability.config import load_config
from marl_stability.core.events import EvaluationEvent
from marl_stability.core.hooks import Hook, TagOwnershipError
from marl_stability.core.sinks import MemorySink
from marl_stability.core.summary import AgentActionStats
from marl_stability.errors import UserError
from marl_stability.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "experiments" / "maddpg_spread.yaml"
TINY = ["maddpg.warmup_steps=300", "maddpg.batch_size=64", "maddpg.update_every=10", "train.eval_every=500",
        "train.eval_episodes=2", "train.checkpoint_every=500", "train.histogram_every=5", "train.log_every=1",
        "train.layer_stats_every=5", "env.num_envs=2"]


def tiny(steps: int = 1000, extra: list[str] | None = None):  # type: ignore[no-untyped-def]
    return load_config(PRESET, TINY + [f"train.steps={steps}"] + (extra or []))


class CountingHook(Hook):
    """A user's hook (loaded by name from config in a test): counts events and logs under its own prefix."""

    name = "counting"
    prefixes = ("user/counts/",)

    def __init__(self, ctx: Any) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)
        self.counts: dict[str, int] = {}

    def _count(self, event: str) -> None:
        self.counts[event] = self.counts.get(event, 0) + 1

    def after_backward(self, ev: Any) -> None:
        self._count("after_backward")

    def after_step(self, ev: Any) -> None:
        self._count("after_step")

    def on_update(self, ev: Any) -> None:
        self._count("on_update")
        self.log.record("user/counts/updates", self.counts["on_update"], self.ctx.env_steps)

    def on_evaluation(self, ev: Any) -> None:
        self._count("on_evaluation")

    def on_end(self, summary: Any) -> None:
        self._count("on_end")
        self.ctx.extra["counts"] = dict(self.counts)

    def summary(self) -> dict[str, Any]:
        return {"updates_seen": self.counts.get("on_update", 0), "status": "hijacked?"}


def _owners(hooks: list[Any], tag: str) -> list[str]:
    return [h.name for h in hooks if any(tag.startswith(p) for p in h.prefixes)]


def test_every_logged_tag_has_exactly_one_owner(tmp_path: Path) -> None:
    memory = MemorySink()
    trainer = Trainer(tiny(), tmp_path / "run", quiet=True, extra_sinks=[memory],
                      hooks=[CountingHook])
    summary = trainer.run()
    assert summary["status"] == "completed"
    tags = set(memory.scalars) | set(memory.histograms) | set(memory.texts)
    assert len(tags) > 150
    hooks = trainer.bus.hooks
    for tag in sorted(tags):
        assert len(_owners(hooks, tag)) == 1, (tag, _owners(hooks, tag))
    # Gradient statistics every update, written at the logging rate: log_every=1 -> one point per update.
    assert len(memory.scalars["grad_norm/critic/agent_0"]) == summary["updates"]
    assert len(memory.scalars["optim/update_ratio/critic/agent_0"]) == summary["updates"] // 5
    counts = trainer.ctx.extra["counts"]
    assert counts["on_update"] == summary["updates"] and counts["on_evaluation"] == 2 and counts["on_end"] == 1
    # 3 agents x (critic + actor) gradient steps per update, each emitted once
    assert counts["after_backward"] == counts["after_step"] == 6 * summary["updates"]
    assert memory.last("user/counts/updates") == summary["updates"]
    # A user's hook adds to the summary under its own name; it cannot overwrite the run's fields.
    assert summary["status"] == "completed"
    assert summary["hooks"] == {"counting": {"updates_seen": summary["updates"], "status": "hijacked?"}}


class Squatter(Hook):
    name = "squatter"
    prefixes = ("grad_norm/critic",)


class Trespasser(Hook):
    name = "trespasser"
    prefixes = ("user/mine",)

    def __init__(self, ctx: Any) -> None:
        self.ctx, self.log = ctx, ctx.scoped(self)

    def on_update(self, ev: Any) -> None:
        self.log.record("loss/critic/agent_0", 0.0, self.ctx.env_steps)


def test_overlapping_claims_fail_at_start_up_before_touching_disk(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="'gradients' and 'squatter' both claim .*grad_norm/"):
        Trainer(tiny(), tmp_path / "run", quiet=True, hooks=[Squatter()])
    assert not (tmp_path / "run").exists()


def test_a_hook_writing_outside_its_prefixes_is_stopped(tmp_path: Path) -> None:
    with pytest.raises(TagOwnershipError, match="trespasser.*loss/critic/agent_0"):
        Trainer(tiny(), tmp_path / "run", quiet=True, hooks=[Trespasser]).run()
    assert (tmp_path / "run" / "summary.json").is_file()  # the run still left an honest summary


class Broken(Hook):
    name = "broken"

    def __init__(self, ctx: Any, needs: int) -> None:  # wrong signature: hooks are built with the context only
        pass


class Stringy(Hook):
    name = "stringy"
    prefixes = "user/"  # type: ignore[assignment]  -- a string, not a tuple


@pytest.mark.parametrize("hook,message", [(Broken, "could not be built with the run context: TypeError"),
                                          (Stringy, "prefixes must be a tuple")])
def test_malformed_user_hooks_are_user_errors(tmp_path: Path, hook: type, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Trainer(tiny(), tmp_path / "run", quiet=True, hooks=[hook])
    assert not (tmp_path / "run").exists()


def test_stop_takes_only_resumable_or_final_statuses() -> None:
    from marl_stability.core.hooks import RunContext

    ctx = RunContext(cfg=tiny(), run_dir=Path("."), layout=None, algorithm=None, logger=MemorySinkLogger())
    with pytest.raises(ValueError, match="interrupted or diverged"):
        ctx.stop("completed")
    ctx.stop("diverged", "why")
    ctx.stop("interrupted", "later")  # the first stop wins
    assert (ctx.status, ctx.stop_reason) == ("diverged", "why")


def test_user_hook_from_config(tmp_path: Path) -> None:
    cfg = tiny(600, ["train.hooks=[test_hooks:CountingHook]"])
    memory = MemorySink()
    trainer = Trainer(cfg, tmp_path / "run", quiet=True, extra_sinks=[memory])
    assert trainer.run()["status"] == "completed"
    assert trainer.ctx.extra["counts"]["on_end"] == 1 and "user/counts/updates" in memory.scalars


@pytest.mark.parametrize("spec,message", [
    ("no_such_module_xyz:Hook", "cannot import no_such_module_xyz"),
    ("test_hooks:NoSuchHook", "has no class NoSuchHook"),
    ("not a spec", "is not module:Class"),
])
def test_bad_user_hook_is_one_line_error(tmp_path: Path, spec: str, message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "marl_stability", "train", "-c", str(PRESET), "--logdir", str(tmp_path),
                          "--quiet", "--steps", "100", "--set", f"train.hooks=[{spec!r}]"],
                         cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "tests"), "PATH": ""})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error:") and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_stop_when_saturated_example_hook() -> None:
    from marl_stability.core.hooks import RunContext
    from marl_stability.hooks.examples import StopWhenSaturated

    ctx = RunContext(cfg=tiny(), run_dir=Path("."), layout=None, algorithm=None, logger=MemorySinkLogger())
    hook = StopWhenSaturated(ctx)

    def evaluation(saturations: list[float]) -> EvaluationEvent:
        ev = EvaluationEvent(0, [], [], [], [])
        ev.derived["action_stats"] = {f"a{i}": AgentActionStats(repeat_rate=1.0, saturation=s, batch_same_action=1.0,
                                                                sensitivity=0.0) for i, s in enumerate(saturations)}
        return ev

    for sats in ([0.99, 0.99], [0.99, 0.5], [0.99, 0.96], [0.97, 0.99]):
        hook.on_evaluation(evaluation(sats))
    assert ctx.status == "running" and hook.streak == 2  # the 0.5 broke the streak
    hook.on_evaluation(evaluation([1.0, 1.0]))
    assert ctx.status == "interrupted" and "0.95" in ctx.stop_reason


class MemorySinkLogger:
    def __init__(self) -> None:
        from marl_stability.core.sinks import Logger

        self.sink = MemorySink()
        self.logger = Logger([self.sink])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)


# --------------------------------------------------------------------------- an on-policy algorithm, same loop
class TinyOnPolicy(Algorithm):
    """A minimal on-policy learner: Gaussian linear policies, a rollout of ``T`` env steps, then ``EPOCHS``
    REINFORCE epochs over it with a return-to-go baseline; no replay. It uses the same gradient stepper
    (events, clipping fixes) as MADDPG; the loop is not told anything about it."""

    name = "tiny_on_policy"
    stat_prefixes = ("loss/policy/", "onpolicy/")
    on_policy = True
    T, EPOCHS, STD = 10, 3, 0.2

    def __init__(self, cfg: Any, layout: Any, fixes: Any, events: Any = None) -> None:
        super().__init__(cfg, layout, fixes, events)
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.actors = [torch.nn.Linear(layout.obs_dims[i], layout.act_dims[i]) for i in range(layout.num_agents)]
        self.opts = [make_optimizer(a.parameters(), cfg.actor_optim) for a in self.actors]
        self.rollout: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def _mean(self, i: int, o: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.actors[i](o))  # inside simple_spread's [0, 1] bounds

    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        sd, out = self.spec, np.zeros((obs.shape[0], self.spec.num_agents, self.spec.max_act_dim), np.float32)
        with torch.no_grad():
            for i in range(sd.num_agents):
                m = self._mean(i, torch.as_tensor(obs[:, i, : sd.obs_dims[i]]))
                if explore:
                    m = (m + self.STD * torch.randn(m.shape, generator=self.gen)).clamp(0, 1)
                out[:, i, : sd.act_dims[i]] = m.numpy()
        return out

    def observe(self, obs, actions, reward, next_obs, terminated, done) -> None:  # type: ignore[no-untyped-def]
        self.rollout.append((obs, actions, reward))

    def pending_updates(self) -> int:
        return 1 if len(self.rollout) >= self.T else 0

    def learn(self) -> dict[str, float]:
        obs = torch.as_tensor(np.stack([r[0] for r in self.rollout]))  # [T, E, N, D]
        act = torch.as_tensor(np.stack([r[1] for r in self.rollout]))
        rew = torch.as_tensor(np.stack([r[2] for r in self.rollout]))  # [T, E, N]
        togo = rew.flip(0).cumsum(0).flip(0)
        adv = (togo - togo.mean()) / (togo.std() + 1e-8)
        self.stepper.use_batch({"obs": obs})
        losses = []
        for _ in range(self.EPOCHS):  # several epochs over the same rollout
            for i, name in enumerate(self.spec.agents):
                d = self.spec.act_dims[i]
                mean = self._mean(i, obs[..., i, : self.spec.obs_dims[i]])
                logp = -((act[..., i, :d] - mean) ** 2).sum(-1) / (2 * self.STD**2)
                loss = -(adv[..., i] * logp).mean()
                self.stepper.step(loss, self.opts[i], list(self.actors[i].parameters()), self.fixes.actor_clip,
                                  f"actor/{name}")
                losses.append(float(loss.detach()))
        self.rollout = []
        return {"loss/policy/last": losses[-1], "onpolicy/epochs": float(self.EPOCHS)}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {f"actor/{n}": a for n, a in zip(self.spec.agents, self.actors)}

    def policy_fn(self, i: int) -> Any:
        return lambda o: self._mean(i, o)

    def preactivations(self, i: int, obs_i: torch.Tensor) -> torch.Tensor:
        return self.actors[i](obs_i)

    def state_dict(self) -> dict[str, Any]:
        return {"actors": [a.state_dict() for a in self.actors], "opts": [o.state_dict() for o in self.opts],
                "gen": self.gen.get_state(), "updates": self.updates,
                "rollout": [list(r) for r in self.rollout]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for a, s in zip(self.actors, state["actors"]):
            a.load_state_dict(s)
        for o, s in zip(self.opts, state["opts"]):
            o.load_state_dict(s)
        self.gen.set_state(state["gen"])
        self.updates = int(state["updates"])
        self.rollout = [tuple(np.asarray(x) for x in r) for r in state["rollout"]]

    def snapshot(self) -> dict[str, Any]:
        return {"actors": [{k: v.clone() for k, v in a.state_dict().items()} for a in self.actors]}

    def restore(self, snap: dict[str, Any]) -> None:
        for a, s in zip(self.actors, snap["actors"]):
            a.load_state_dict(s)


def test_an_on_policy_algorithm_runs_through_the_same_loop(tmp_path: Path) -> None:
    cfg = tiny(1200, ["algo=test_hooks:TinyOnPolicy", "fixes.grad_clip.actor.max=0.5"])
    memory = MemorySink()
    summary = Trainer(cfg, tmp_path / "on", quiet=True, extra_sinks=[memory]).run()
    assert summary["status"] == "completed" and summary["algo"] == "test_hooks:TinyOnPolicy"
    assert summary["updates"] == 1200 // (2 * TinyOnPolicy.T)  # one update per full rollout of 10 steps x 2 envs
    # Its gradient steps went through the same hooks: 3 epochs x 3 agents per update, clipped by the fix.
    assert len(memory.scalars["grad_norm/actor/agent_0"]) == 3 * summary["updates"]
    assert all(v <= 0.5 + 1e-5 for _, v in memory.scalars["optim/grad_norm_postclip/actor/agent_0"])
    assert summary["max_grad_norm"]["actor"] > 0 and "critic" not in {k for k, v in summary["max_grad_norm"].items() if v}
    assert "loss/policy/last" in memory.scalars and "eval/saturation/agent_2" in memory.scalars
    assert summary["action_stats"]["agent_0"]["sensitivity"] > 0
    # No value estimate: the value check is simply absent.
    assert not any(t.startswith("q/initial/") for t in memory.scalars)
    assert math.isfinite(summary["final_return"])
