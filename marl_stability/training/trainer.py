"""The training loop: collect -> store -> update -> events -> hooks -> sinks, plus evaluation and checkpoints.

The trainer owns the loop and nothing else. It knows the algorithm only through ``marl_stability.agents.base.Algorithm``
and the run's watchers only as hooks (``marl_stability.core.hooks``): it emits each event once and never
computes a metric, tests a fix flag or decides what a NaN means.
"""

from __future__ import annotations

import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from marl_stability.agents.base import NonFiniteParameters
from marl_stability.config import RunConfig, config_diff, dump_yaml, flatten
from marl_stability.core.build import build_run, check_compatible, make_venv, probe_env
from marl_stability.core.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    keep_history,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    saved_config,
    save_final_checkpoint,
)
from marl_stability.core.evaluation import evaluate
from marl_stability.core.events import (
    EnvStepEvent,
    EpisodesEvent,
    NonFiniteEvent,
    UpdateEvent,
)
from marl_stability.core.hooks import HookBus, RunContext
from marl_stability.core.sinks import Logger
from marl_stability.core.summary import TIMING_KEYS, RunSummary
from marl_stability.envs.vector import EnvOutputError
from marl_stability.errors import UserError
from marl_stability.fixes.registry import fix_settings
from marl_stability.core.live import readopt, start_from
from marl_stability.hooks.assemble import build_hooks
from marl_stability.hooks.builtin import DetectorHook
from marl_stability.hooks.heal import HealHook

__all__ = ["Trainer", "Progress", "TIMING_KEYS", "CHECKPOINT_FORMAT", "make_venv", "probe_env", "check_compatible"]

CHECKPOINT_FORMAT = 2  # 2: hooks own detector, action-statistics and non-finite state


@dataclass
class Progress:
    """The loop's own counters and records; saved in checkpoints so resume is exact."""

    env_steps: int = 0
    episodes: int = 0
    evaluations: int = 0
    checkpoints: int = 0
    best_return: Optional[float] = None
    final_return: Optional[float] = None
    eval_history: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0
    started_from: dict[str, Any] = field(default_factory=dict)  # train.start_from: the checkpoint and its env step

    @classmethod
    def from_state(cls, p: dict[str, Any], **changes: Any) -> "Progress":
        return cls(**{**{k: (dict(v) if isinstance(v, dict) else v) for k, v in p.items()}, **changes})

    @property
    def steps_per_second(self) -> Optional[float]:
        """Env steps this run took (not those of the checkpoint it started from) per wall second."""
        steps = self.env_steps - int(self.started_from.get("env_steps", 0))
        return round(steps / self.wall_seconds, 1) if self.wall_seconds > 0 else None


def _crossed(before: int, after: int, every: int) -> bool:
    return after // every > before // every


def _alarmed(bus: HookBus) -> bool:
    """A failure detector of the run has fired (or a heal acted on one: a heal restores the detectors)."""
    hook, healer = bus.find(DetectorHook), bus.find(HealHook)
    return (hook is not None and hook.detectors.fired) or bool(healer and healer.records)


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint of this format (a one-line error otherwise)."""
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path} has format {state.get('format')}, expected {CHECKPOINT_FORMAT}")
    return state


def start_run_from(algo: Any, cfg: RunConfig, path: Path) -> Progress:
    """``train.start_from``: the checkpoint's learner in ``algo`` (:func:`marl_stability.core.live.start_from`) and
    its progress (env steps, episodes, evaluations so far) as this run's starting point."""
    if not path.is_file():
        raise UserError(f"train.start_from: no checkpoint at {path}")
    progress = start_from(algo, cfg, load_state(path), path)
    try:
        return Progress.from_state(progress, checkpoints=0, wall_seconds=0.0,
                                   started_from={"checkpoint": str(path), "env_steps": int(progress["env_steps"])})
    except (TypeError, ValueError) as e:
        raise UserError(f"checkpoint {path} does not match this run: {e.__class__.__name__}: {e}") from None


def check_saved_config(state: dict[str, Any], cfg: RunConfig, path: Path) -> None:
    """A resume continues the run it was written by: the saved config must equal ``cfg`` except the budget and
    the checkpoint policy (one line naming the first keys that differ, otherwise)."""
    saved = saved_config(state, path)
    diff = config_diff(saved, cfg, ignore=("train.steps", "train.checkpoints", "train.keep_checkpoints"))
    if diff:
        before, now = flatten(saved.to_dict()), flatten(cfg.to_dict())
        shown = ", ".join(f"{k} (checkpoint {before.get(k)!r}, now {now.get(k)!r})" for k in diff[:3])
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise UserError(f"checkpoint was written with another config: {shown}{more}")


class Trainer:
    """One run: ``Trainer(cfg, run_dir).run()`` -> the summary (also written to ``summary.json``).

    An environment that fails (a non-finite observation or reward, or an exception in its reset/step) ends the
    run with status ``env_error``: summary.json (its ``error`` says where) and the last checkpoint are kept, and
    ``run`` raises the :class:`marl_stability.envs.vector.EnvOutputError` (one line: env, agent, field, env step).

    ``extra_sinks``: more metric sinks (e.g. ``MemorySink``); ``hooks``: more hooks (objects, or classes
    called with the run context) after the built-in ones and those of ``train.hooks``.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | Path, quiet: bool = False, extra_sinks: list[Any] | None = None,
                 hooks: Sequence[Any] = (), extra: Optional[dict[str, Any]] = None) -> None:
        self.cfg, self.run_dir, self.quiet = cfg, Path(run_dir), quiet
        torch.set_num_threads(cfg.train.torch_threads)
        self.bus = HookBus()
        parts = build_run(cfg, events=self.bus)
        self.venv, self.spec, self.fixes, self.algo = parts.venv, parts.layout, parts.fixes, parts.algorithm
        self.progress = Progress()
        self.logger = Logger(list(extra_sinks or []))
        self.ctx = RunContext(cfg, self.run_dir, self.spec, self.algo, self.logger, quiet)
        # what the caller knows about the run, for hooks (a sweep trial: its HParams labels and varying keys)
        self.ctx.extra.update(extra or {})
        try:
            self.bus.install(build_hooks(self.ctx, hooks))
        except BaseException:
            self.venv.close()
            raise
        self._stop_requested = False
        self._wall = (0.0, 0.0)  # (wall seconds before this session, perf_counter at its start)
        self._error: Optional[str] = None  # what ended the run when it did not end by itself (summary.json error)
        self._drop_resume_checkpoint = False  # set when the run ended under train.checkpoints final or none

    @property
    def status(self) -> str:
        return self.ctx.status

    @property
    def checkpoint_path(self) -> Path:
        return resume_checkpoint(self.run_dir)

    # ------------------------------------------------------------------ checkpoints
    def _state(self, obs: Optional[np.ndarray] = None) -> dict[str, Any]:
        """What a checkpoint holds (wall time included); without ``obs`` what a final one keeps (no envs, hooks)."""
        self.progress.wall_seconds = self._elapsed()
        state = {"format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "algo": self.algo.state_dict(),
                 "progress": asdict(self.progress)}
        if (healer := self.bus.find(HealHook)) is not None and healer.overrides:  # networks of the healed config
            state["healed"] = list(healer.overrides)
        if obs is not None:
            state.update({"env": self.venv.state_dict(), "obs": obs, "hooks": self.bus.state_dict()})
        return state

    def _save_checkpoint(self, obs: np.ndarray, history: int = 0) -> None:  # history: train.keep_checkpoints
        if self.cfg.train.checkpoints == "none" and not history:
            return
        self.bus.before_checkpoint()
        state = self._state(obs)  # once for both files: the algorithm's state copies the replay buffer
        if history:
            keep_history(self.run_dir, state, self.progress.env_steps, history, _alarmed(self.bus))
        if self.cfg.train.checkpoints != "none":
            save_checkpoint(self.checkpoint_path, state)
            self.progress.checkpoints += 1

    def _restore(self) -> np.ndarray:
        state = load_state(self.checkpoint_path)
        check_saved_config(state, self.cfg, self.checkpoint_path)
        try:
            self.ctx.cfg = readopt(self.algo, self.cfg, list(state.get("healed", [])))  # heals before the checkpoint
            self.algo.load_state_dict(state["algo"])
            self.venv.load_state_dict(state["env"])
            self.bus.load_state_dict(state["hooks"])
            self.progress = Progress.from_state(state["progress"])
            return np.asarray(state["obs"])
        except EnvOutputError:
            raise  # the env failed while its episode was replayed: its own one-line error, not a checkpoint problem
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as e:
            raise UserError(f"checkpoint {self.checkpoint_path} does not match this run: "
                            f"{e.__class__.__name__}: {e}") from None

    # ------------------------------------------------------------------ summary
    def _elapsed(self) -> float:
        return self._wall[0] + time.perf_counter() - self._wall[1]

    def _summary(self) -> RunSummary:
        p = self.progress
        fields = {
            "status": self.status, "env": self.cfg.env.id, "algo": self.cfg.algo, "on_policy": type(self.algo).on_policy,
            "seed": self.cfg.seed, "fixes": fix_settings(self.ctx.cfg, type(self.algo).on_policy), "env_steps": p.env_steps, "updates": self.algo.updates,
            "episodes": p.episodes, "final_return": p.final_return, "best_return": p.best_return,
            "eval_history": list(p.eval_history), "agents": list(self.spec.agents),
            "wall_seconds": round(p.wall_seconds, 3),
            "env_steps_per_second": p.steps_per_second, "error": self._error, "started_from": p.started_from,
        }
        return RunSummary.model_validate({**fields, **self.bus.summary()})

    # ------------------------------------------------------------------ the loop
    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def _evaluate(self) -> None:
        p = self.progress
        try:
            ev = evaluate(self.cfg, self.algo, self.fixes, p.evaluations + 1)
        except EnvOutputError as e:
            e.context = f"evaluation {p.evaluations + 1}"
            raise
        p.evaluations += 1
        p.final_return = ev.team_return
        p.best_return = ev.team_return if p.best_return is None else max(p.best_return, ev.team_return)
        p.eval_history.append({"env_steps": p.env_steps, "team_return": ev.team_return})
        self.bus.on_evaluation(ev)

    def _updates(self) -> None:
        """The updates the algorithm asks for now, each followed by its events."""
        algo, bus = self.algo, self.bus
        for _ in range(algo.pending_updates()):
            try:
                stats = algo.update()
            except NonFiniteParameters as e:
                bus.on_nonfinite(NonFiniteEvent(1, str(e), fatal=True, evidence=e.evidence))
            else:
                bus.on_update(UpdateEvent(algo.updates, stats))
                if stats.nonfinite:
                    reason = f"{stats.nonfinite} non-finite loss/gradient steps skipped in update {algo.updates}"
                    bus.on_nonfinite(NonFiniteEvent(stats.nonfinite, reason, fatal=False, evidence=stats.evidence))
            if self.status != "running":
                return

    def _env_step(self, obs: np.ndarray) -> Optional[np.ndarray]:
        """Act, step the envs, store, update. Returns the next observations (None: the actions were not finite)."""
        p, ctx = self.progress, self.ctx
        actions = self.algo.act(obs, explore=True)
        if not np.isfinite(actions).all():  # mpe2 would raise on a NaN action
            self.bus.on_nonfinite(NonFiniteEvent(1, f"non-finite action at env step {p.env_steps}", fatal=True))
            return None
        step = self.venv.step(actions)
        self.algo.observe(obs, actions, step.reward, step.next_obs, step.terminated, step.done)
        p.env_steps += actions.shape[0]
        ctx.env_steps = p.env_steps
        self.bus.on_env_step(EnvStepEvent(actions))
        if step.episodes:
            p.episodes += len(step.episodes)
            self.bus.on_episodes(EpisodesEvent(step.episodes))
        self._updates()
        return step.obs

    def _train(self, obs: np.ndarray) -> np.ndarray:
        p, t = self.progress, self.cfg.train
        while p.env_steps < t.steps and self.status == "running":
            before = p.env_steps
            nxt = self._env_step(obs)
            if nxt is None:
                continue  # a rollback restored the networks (or the run diverged): act again
            obs = nxt
            if self.status != "running":
                break
            if _crossed(before, p.env_steps, t.eval_every):
                self._evaluate()
            if _crossed(before, p.env_steps, t.checkpoint_every):
                self._save_checkpoint(obs, history=t.keep_checkpoints)
            if self._stop_requested:
                self.ctx.stop("interrupted", "SIGINT/SIGTERM")
        return obs

    def _begin(self, resume: bool) -> Optional[np.ndarray]:
        """Restore a checkpoint, or write the config of a new run (whose envs ``run`` resets: an env failing in
        its first reset ends the run as env_error like any later failure)."""
        if self.cfg.train.start_from and not resume:  # first: a checkpoint it cannot start from leaves no run folder
            self.progress = start_run_from(self.algo, self.cfg, Path(self.cfg.train.start_from).expanduser())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        obs = None
        if resume:
            obs = self._restore()
        else:
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(self.cfg))
        self.ctx.env_steps = self.progress.env_steps
        self._wall = (self.progress.wall_seconds, time.perf_counter())
        self.bus.on_start(resume)
        return obs

    def _complete(self, obs: np.ndarray) -> None:
        p = self.progress
        if self.status == "running":
            if not p.eval_history or p.eval_history[-1]["env_steps"] != p.env_steps:
                self._evaluate()
            self.ctx.status = "completed"
        mode = self.cfg.train.checkpoints
        if self.status == "interrupted" or (self.status == "completed" and mode == "resume"):
            self._save_checkpoint(obs)
            return
        if mode == "final" and self.status == "completed":
            save_final_checkpoint(self.run_dir, self._state(), type(self.algo).resume_only)
        elif mode == "final" and self.checkpoint_path.is_file():  # diverged: the last state before it
            save_final_checkpoint(self.run_dir, load_checkpoint(self.checkpoint_path), type(self.algo).resume_only)
        # final / none: the resume checkpoint (a stale one too, from a run resumed under another policy) goes once
        # summary.json is written
        self._drop_resume_checkpoint = mode != "resume"

    def _finish(self) -> dict[str, Any]:
        self.progress.wall_seconds = self._elapsed()
        if self.status == "running":  # an exception escaped: still leave an honest summary
            self.ctx.status = "crashed"
        summary: Optional[RunSummary] = None
        try:
            summary = self._summary()
            self.bus.on_end(summary)
        finally:
            self.logger.flush()
            self.logger.close()
            if summary is not None:
                atomic_write_json(self.run_dir / "summary.json", summary.to_json())
                if self._drop_resume_checkpoint:
                    self.checkpoint_path.unlink(missing_ok=True)
            self.venv.close()
        return summary.to_json()

    def run(self, resume: bool = False) -> dict[str, Any]:
        try:
            obs = self._begin(resume)
        except BaseException:
            self.logger.close()
            self.venv.close()
            raise
        old_handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        env_failure: Optional[EnvOutputError] = None
        try:
            self._complete(self._train(self.venv.reset() if obs is None else obs))
        except EnvOutputError as e:
            env_failure = self._env_failed(e)
        except Exception as e:
            text = str(e).strip()
            self._error = f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
            raise
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            summary = self._finish()
        if env_failure is not None:
            raise env_failure
        return summary

    def _env_failed(self, e: EnvOutputError) -> EnvOutputError:
        """The environment failed (not the learner, not our code): status env_error, no new checkpoint (the last
        one holds the state before the failure), the one-line reason in summary.json and the summary text."""
        if e.env_step is None:
            e.env_step = self.progress.env_steps
        self.ctx.status, self.ctx.stop_reason = "env_error", str(e)
        self._error = str(e)
        return e
