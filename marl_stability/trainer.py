"""The training loop: collect -> store -> update -> metrics -> sinks, plus evaluation and checkpoints.

The trainer owns the loop and nothing else: fixes are objects inside the algorithm, metrics are computed
by the algorithm's ``update`` (and, later, hooks) and leave through the ``Logger``.
"""

from __future__ import annotations

import collections
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import agents
import envs
from agents.maddpg import AgentSpec, NonFiniteParameters
from agents.networks import CONTINUOUS_HEADS
from marl_stability.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from marl_stability.config import RunConfig, config_diff, dump_yaml, flatten
from marl_stability.detect import Detectors, batch_same_action_rate, saturation_fraction, standardized_sensitivity
from marl_stability.errors import UserError
from marl_stability.fixes import build_fixes
from marl_stability import monitor
from marl_stability.sinks import Logger, TensorBoardSink

CHECKPOINT_FORMAT = 1
TIMING_KEYS = ("wall_seconds", "env_steps_per_second")
MONITOR_OWNED = ("grad_norm/", "grad_norm_postclip/")


# One dashboard per part of the failure story (TensorBoard's "Custom Scalars" tab).
DASHBOARD = {
    "Gradients": {
        "critic grad norm (pre-clip)": ["Multiline", [r"grad_norm/critic/.*"]],
        "actor grad norm (pre-clip)": ["Multiline", [r"grad_norm/actor/.*"]],
        "grad norm after clipping": ["Multiline", [r"grad_norm_postclip/.*"]],
        "clip fraction": ["Multiline", [r"clip_fraction/.*"]],
        "update/weight ratio": ["Multiline", [r"update_ratio/.*"]],
    },
    "Critic": {
        "critic loss": ["Multiline", [r"loss/critic/.*"]],
        "Q mean / target": ["Multiline", [r"q/mean/.*", r"q/target_mean/.*"]],
        "Q range": ["Multiline", [r"q/min/.*", r"q/max/.*"]],
        "TD error": ["Multiline", [r"critic/td_error_.*"]],
        "dQ/da (pull on the actor)": ["Multiline", [r"critic/dq_da_norm/.*"]],
    },
    "Actor outputs": {
        "saturation": ["Multiline", [r"eval/saturation/.*"]],
        "repeated-action rate": ["Multiline", [r"eval/repeat_rate/.*"]],
        "same action for different states": ["Multiline", [r"eval/batch_same_action/.*"]],
        "sensitivity |da/dobs|": ["Multiline", [r"eval/sensitivity/.*"]],
        "max |pre-activation|": ["Multiline", [r"actor/preact_max_abs_batch/.*"]],
        "actor loss": ["Multiline", [r"loss/actor/.*"]],
    },
    "Rewards": {
        "team return (eval, train)": ["Multiline", [r"eval/team_return", r"episode/team_return"]],
        "raw vs learner reward": ["Multiline", [r"reward/raw_batch_mean/.*", r"reward/learner_batch_mean/.*"]],
        "learner reward scale": ["Multiline", [r"reward/learner_scale"]],
    },
    "Health": {
        "non-finite": ["Multiline", [r"health/.*"]],
        "env steps per second": ["Multiline", [r"perf/env_steps_per_second"]],
    },
}


def _json_safe(obj: Any) -> Any:
    """NaN/Inf are not JSON: write them as strings so the forensic files stay standard JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def make_venv(cfg: RunConfig, num_envs: int, seed: int) -> Any:
    e = cfg.env
    return envs.make_vector_env(e.id, e.kwargs, num_envs, seed, backend=e.backend, reward_scale=e.reward_scale,
                                obs_scale=e.obs_scale, obs_offset=e.obs_offset)


def probe_env(cfg: RunConfig) -> None:
    """Build one env copy, reset it and take one step, so a bad env kwarg fails before any file is touched."""
    try:
        venv = make_venv(cfg, 1, cfg.seed)
        venv.reset()
        venv.step(np.asarray(venv.layout.act_low, np.float32)[None])
        venv.close()
    except envs.EnvError as e:
        if cfg.env.id in str(e):
            raise
        raise envs.EnvError(f"{cfg.env.id} (env.backend={cfg.env.backend}): {e}") from None
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"environment {cfg.env.id} with env.kwargs {cfg.env.kwargs} failed on a probe step: "
                        f"{e.__class__.__name__}: {detail}") from None


def check_compatible(cfg: RunConfig, spec: AgentSpec) -> None:
    """Options that only make sense for continuous actions are errors on discrete-action agents."""
    low, high = np.asarray(spec.act_low), np.asarray(spec.act_high)
    unbounded = [n for i, n in enumerate(spec.agents)
                 if not spec.discrete[i] and not np.isfinite(high[i, : spec.act_dims[i]] - low[i, : spec.act_dims[i]]).all()]
    if unbounded:
        raise UserError(f"agents {', '.join(unbounded)} of {cfg.env.id} have unbounded Box actions; MADDPG here needs "
                        "finite bounds (exploration noise and output heads are scaled by the action range)")
    if any(spec.discrete) and cfg.actor.output in CONTINUOUS_HEADS:
        bad = [n for n, d in zip(spec.agents, spec.discrete) if d]
        raise UserError(
            f"actor.output={cfg.actor.output} needs continuous actions, but {cfg.env.id} has discrete actions "
            f"for {', '.join(bad)} (use actor.output=auto or env.kwargs.continuous_actions=true)"
        )


@dataclass
class Progress:
    """Counters and records that make up summary.json; saved in checkpoints so resume is exact."""

    env_steps: int = 0
    episodes: int = 0
    evaluations: int = 0
    checkpoints: int = 0
    nonfinite_events: int = 0
    rollbacks: int = 0
    max_grad_norm: dict[str, float] = field(default_factory=lambda: {"actor": 0.0, "critic": 0.0})
    best_return: float | None = None
    final_return: float | None = None
    eval_history: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, quiet: bool = False, extra_sinks: list[Any] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.extra_sinks = extra_sinks or []
        torch.set_num_threads(cfg.train.torch_threads)
        probe_env(cfg)
        self.venv = make_venv(cfg, cfg.env.num_envs, cfg.seed)
        try:
            self.spec = self.venv.layout
            check_compatible(cfg, self.spec)
            self.fixes = build_fixes(cfg.fixes, cfg.env.num_envs, self.spec.num_agents, self.spec.max_obs_dim,
                                     cfg.maddpg.gamma)
            self.algo = agents.make(cfg, self.spec, self.fixes)
        except BaseException:
            self.venv.close()
            raise
        self.progress = Progress()
        self.status = "running"
        self._stop_requested = False
        self._action_window: list[np.ndarray] = []
        self._history: collections.deque[dict[str, float]] = collections.deque(maxlen=cfg.train.forensic_history)
        self._rollback = cfg.train.on_nonfinite == "rollback"
        self.detectors = Detectors(cfg.detectors)
        self.final_action_stats: dict[str, dict[str, float]] = {}
        self._snapshot: dict[str, Any] | None = None

    # ------------------------------------------------------------------ files
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def _save_checkpoint(self, obs: np.ndarray) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "algo": self.algo.state_dict(),
            "env": self.venv.state_dict(),
            "obs": obs,
            "progress": asdict(self.progress),
            "detectors": self.detectors.state_dict(),
            "final_action_stats": self.final_action_stats,
            "rollback_snapshot": self._snapshot,  # a resumed run must roll back to the same state
        }
        save_checkpoint(self.checkpoint_path, state)
        self.progress.checkpoints += 1

    def _restore(self) -> np.ndarray:
        state = load_checkpoint(self.checkpoint_path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"checkpoint {self.checkpoint_path} has format {state.get('format')}, expected {CHECKPOINT_FORMAT}")
        try:
            saved = RunConfig.model_validate(state["config"])
        except Exception:
            raise UserError(f"checkpoint {self.checkpoint_path} holds an invalid config") from None
        diff = config_diff(saved, self.cfg, ignore=("train.steps",))
        if diff:
            shown = ", ".join(f"{k} (checkpoint {flatten(saved.to_dict()).get(k)!r}, now {flatten(self.cfg.to_dict()).get(k)!r})" for k in diff[:3])
            more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
            raise UserError(f"checkpoint was written with another config: {shown}{more}")
        try:
            self.algo.load_state_dict(state["algo"])
            self.venv.load_state_dict(state["env"])
            self.detectors.load_state_dict(state["detectors"])
            self.final_action_stats = {a: dict(v) for a, v in state["final_action_stats"].items()}
            self._snapshot = state["rollback_snapshot"]
            p = state["progress"]
            self.progress = Progress(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in p.items()})
            return np.asarray(state["obs"])
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as e:
            raise UserError(f"checkpoint {self.checkpoint_path} does not match this run: "
                            f"{e.__class__.__name__}: {e}") from None

    def _summary(self) -> dict[str, Any]:
        p = self.progress
        return {
            "status": self.status,
            "env": self.cfg.env.id,
            "algo": self.cfg.algo,
            "seed": self.cfg.seed,
            "fixes": self.cfg.fix_settings(),
            "env_steps": p.env_steps,
            "updates": self.algo.updates,
            "episodes": p.episodes,
            "final_return": p.final_return,
            "best_return": p.best_return,
            "max_grad_norm": dict(p.max_grad_norm),
            "nonfinite_events": p.nonfinite_events,
            **{k: v for k, v in self.detectors.summary().items()},
            **self._final_action_summary(),
            "rollbacks": p.rollbacks,
            "eval_history": list(p.eval_history),
            "agents": list(self.spec.agents),
            "wall_seconds": round(p.wall_seconds, 3),
            "env_steps_per_second": round(p.env_steps / p.wall_seconds, 1) if p.wall_seconds > 0 else None,
        }

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        """E episodes without exploration noise on fresh env copies; obs statistics stay frozen.

        Besides returns, it measures the action statistics of the detectors and the critic's
        overestimation: Q_i(s_0, mu(s_0)) against the discounted return observed from s_0.
        """
        cfg = self.cfg
        n = cfg.train.eval_episodes
        # Seed depends only on (seed, evaluation index): evaluation never perturbs training randomness.
        venv = make_venv(cfg, n, cfg.seed * 100_003 + 7919 * (self.progress.evaluations + 1))
        obs = venv.reset()
        q_initial = self.algo.q_values(obs)  # [n, N]
        mc_return = np.zeros((n, self.spec.num_agents))
        discount = np.ones(n)
        first: dict[int, dict[str, Any]] = {}
        observed, taken, counted = [], [], []  # full [n, ...] arrays and which rows count for the statistics
        fresh = np.ones(n, bool)
        for _ in range(100_000):
            actions = self.algo.act(obs, explore=False)
            step = venv.step(actions)
            live = np.array([b not in first for b in range(n)])  # only each env's first episode counts
            observed.append(obs)
            taken.append(actions)
            counted.append(live & ~fresh)  # a consecutive pair (t-1, t) inside one first episode
            learner_reward = self.fixes.reward(torch.as_tensor(step.reward)).numpy()
            mc_return += np.where(live[:, None], discount[:, None] * learner_reward, 0.0)
            discount *= cfg.maddpg.gamma
            fresh = step.done.copy()
            for ep in step.episodes:
                first.setdefault(int(ep["env_index"]), ep)
            if len(first) == n:
                break
            obs = step.obs
        else:
            venv.close()
            raise UserError(f"evaluation: {n - len(first)} of {n} episodes of {cfg.env.id} did not end within 100000 steps")
        venv.close()
        self._action_stats(observed, taken, counted)
        self._critic_check = {a: (float(q_initial[:, i].mean()), float(mc_return[:, i].mean()))
                              for i, a in enumerate(self.spec.agents)}
        episodes = [first[i] for i in sorted(first)]
        team = float(np.mean([e["team_return"] for e in episodes]))
        per_agent = {a: float(np.mean([e["agent_returns"][a] for e in episodes])) for a in self.spec.agents}
        return {"team_return": team, "agent_returns": per_agent, "length": float(np.mean([e["length"] for e in episodes]))}

    def _action_stats(self, observed: list[np.ndarray], taken: list[np.ndarray], counted: list[np.ndarray]) -> None:
        """Per agent: repeated-action rate over consecutive evaluation steps, saturation, how many different
        states map to one action, and the sensitivity of the action to the observation."""
        sd = self.spec
        stats: dict[str, dict[str, float]] = {}
        obs_all = np.concatenate(observed)  # [T*n, N, D]
        self._eval_samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for i, agent in enumerate(sd.agents):
            d = sd.act_dims[i]
            low, high = sd.act_low[i, :d], sd.act_high[i, :d]
            # what the env applies: clipped continuous actions (a linear head's 3.7 and 5.2 are the same action)
            seq = np.stack([np.clip(a[:, i, :d], low, high) for a in taken])  # [T, n, d]
            unchanged = np.abs(seq[1:] - seq[:-1]).max(axis=-1) <= 1e-3  # [T-1, n]
            pairs = unchanged[np.stack(counted[1:])] if len(taken) > 1 else np.zeros(0)
            acts = torch.as_tensor(seq.reshape(-1, d))
            o = torch.as_tensor(obs_all[:256, i, : sd.obs_dims[i]])
            policy = self.algo.policy_fn(i)
            if sd.discrete[i]:
                with torch.no_grad():
                    probs = policy(o)
                saturation = float((probs.max(dim=-1).values >= 0.99).float().mean())
            else:
                saturation = saturation_fraction(acts, low.tolist(), high.tolist(), self.cfg.detectors.saturation_margin)
            stats[agent] = {
                "repeat_rate": float(pairs.mean()) if pairs.size else float("nan"),
                "saturation": saturation,
                "batch_same_action": batch_same_action_rate(acts, self.cfg.detectors.same_action_atol,
                                                            self.cfg.detectors.same_action_max_rows),
                "sensitivity": standardized_sensitivity(policy, o),
            }
            with torch.no_grad():
                pre = self.algo.preactivations(i, torch.as_tensor(obs_all[:, i, : sd.obs_dims[i]]))
            self._eval_samples[agent] = (seq.reshape(-1, d), pre.numpy())
        self.final_action_stats = stats

    def _final_action_summary(self) -> dict[str, Any]:
        s = self.final_action_stats
        mean = (lambda k: float(np.mean([v[k] for v in s.values()])) if s else None)
        return {"repeated_action_rate": mean("repeat_rate"), "saturation_rate": mean("saturation"),
                "action_sensitivity": mean("sensitivity"), "action_stats": s}

    def _log_eval(self, logger: Logger) -> None:
        result = self.evaluate()
        for agent, st in self.final_action_stats.items():
            for key, value in st.items():
                logger.record(f"eval/{key}/{agent}", value, self.progress.env_steps)
            self.detectors.update_actions(agent, st["repeat_rate"], st["saturation"], st["sensitivity"], self.progress.env_steps)
        step = self.progress.env_steps
        for agent, (q0, g0) in self._critic_check.items():
            logger.record(f"critic/q_initial/{agent}", q0, step)
            logger.record(f"critic/mc_return/{agent}", g0, step)
            logger.record(f"critic/overestimation/{agent}", q0 - g0, step)
        for agent, (acts, pre) in self._eval_samples.items():
            for k in range(acts.shape[1]):
                logger.histogram(f"eval/actions/{agent}/dim{k}", acts[:, k], step)
            logger.histogram(f"actor/preact/{agent}", pre, step)
            logger.record(f"eval/preact_max_abs/{agent}", float(np.abs(pre).max()), step)
        p = self.progress
        p.evaluations += 1
        p.final_return = result["team_return"]
        p.best_return = result["team_return"] if p.best_return is None else max(p.best_return, result["team_return"])
        p.eval_history.append({"env_steps": p.env_steps, "team_return": result["team_return"]})
        logger.record("eval/team_return", result["team_return"], p.env_steps)
        for a, r in result["agent_returns"].items():
            logger.record(f"eval/agent_return/{a}", r, p.env_steps)

    # ------------------------------------------------------------------ logging helpers
    def _log_episodes(self, logger: Logger, episodes: list[dict[str, Any]]) -> None:
        step = self.progress.env_steps
        values = {"episode/team_return": float(np.mean([e["team_return"] for e in episodes])),
                  "episode/length": float(np.mean([e["length"] for e in episodes]))}
        for a in self.spec.agents:
            values[f"episode/agent_return/{a}"] = float(np.mean([e["agent_returns"][a] for e in episodes]))
        logger.record_dict(values, step)

    def _log_update(self, logger: Logger, stats: dict[str, float], log: bool) -> None:
        p = self.progress
        for key, value in stats.items():
            if key.startswith("grad_norm/") and math.isfinite(value):
                model = key[len("grad_norm/"):]  # e.g. critic/agent_0
                kind = model.split("/", 1)[0]
                p.max_grad_norm[kind] = max(p.max_grad_norm[kind], value)
                self.detectors.update_grad_norm(model, value, p.env_steps)
        if log:
            # With the monitor attached, grad_norm/* and grad_norm_postclip/* are its tags (one owner per tag).
            owned = MONITOR_OWNED if self.algo.monitors else ()
            logger.record_dict({k: v for k, v in stats.items() if not k.startswith(owned)} if owned else stats, p.env_steps)

    def _log_histograms(self, logger: Logger) -> None:
        if not self._action_window:
            return
        acts = np.concatenate(self._action_window, axis=0)  # [T*B, N, A]
        for i, a in enumerate(self.spec.agents):
            logger.histogram(f"actions/{a}", acts[:, i, : self.spec.act_dims[i]], self.progress.env_steps)
        self._action_window.clear()

    def _hparams(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in flatten(self.cfg.to_dict()).items():
            if v is None:
                out[k] = "none"
            elif isinstance(v, (bool, int, float, str)):
                out[k] = v
            else:
                out[k] = str(v)
        return out

    def _log_detector_events(self, logger: Logger) -> None:
        for name, at, message in self.detectors.fired_events():
            logger.text(f"detectors/{name}", f"env step {at}: {message}", self.progress.env_steps)

    # ------------------------------------------------------------------ non-finite values
    def _on_nonfinite(self, logger: Logger, count: int, reason: str, fatal: bool) -> None:
        """Count, keep forensic evidence of the first event, then roll back, go on skipping, or diverge."""
        p, cfg = self.progress, self.cfg
        p.nonfinite_events += count
        if self.detectors.update_nonfinite(count, p.env_steps):
            self._write_forensics(reason)
        logger.record("health/nonfinite_events", p.nonfinite_events, p.env_steps)
        if self._rollback:
            if self._snapshot is not None and p.rollbacks < cfg.train.max_rollbacks:
                self.algo.restore(self._snapshot)
                p.rollbacks += 1
                logger.record("health/rollbacks", p.rollbacks, p.env_steps)
                logger.text("health/events", f"{reason}; rolled back to the last good snapshot (rollback {p.rollbacks})", p.env_steps)
                return
            self.status = "diverged"
            logger.text("health/events", f"{reason}; no rollback left: stopping", p.env_steps)
        elif fatal or p.nonfinite_events >= cfg.train.max_nonfinite:
            self.status = "diverged"
            logger.text("health/events", f"{reason}; {p.nonfinite_events} non-finite events: stopping", p.env_steps)
        else:
            logger.text("health/events", reason, p.env_steps)

    def _write_forensics(self, reason: str) -> None:
        """forensics/: the offending batch, parameters and gradients, recent metrics and the config."""
        folder = self.run_dir / "forensics"
        evidence = self.algo.first_nonfinite or {}
        tensors = {k: evidence.get(k, {}) for k in ("batch", "parameters", "gradients")}
        save_checkpoint(folder / "bundle.pt", {"format": CHECKPOINT_FORMAT, **tensors})
        event = {"reason": reason, "env_steps": self.progress.env_steps,
                 **{k: evidence.get(k) for k in ("update", "model", "what", "loss")}}
        atomic_write_json(folder / "event.json", _json_safe(event))
        atomic_write_json(folder / "recent_metrics.json", _json_safe(list(self._history)))
        atomic_write_text(folder / "config.yaml", dump_yaml(self.cfg))

    # ------------------------------------------------------------------ the loop
    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop_requested = True

    def run(self, resume: bool = False) -> dict[str, Any]:
        cfg, p = self.cfg, self.progress
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            try:
                obs = self._restore()
            except BaseException:
                self.venv.close()
                raise
            p = self.progress
        else:
            obs = self.venv.reset()
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
        # Events logged at the checkpoint step itself were written before the checkpoint: keep them.
        tb = TensorBoardSink(self.run_dir, purge_step=p.env_steps + 1 if resume else None)
        logger = Logger([tb, *self.extra_sinks])
        # The same monitor API users attach to their own loops: per-layer norms, update ratios, clip fractions.
        if cfg.train.layer_stats:
            self.algo.monitors = {name: monitor.attach({name: net}, writer=logger)
                                  for name, net in self.algo.modules().items()}
            self.algo.monitor_every = cfg.train.layer_stats_every
        if self._rollback and self._snapshot is None:
            self._snapshot = self.algo.snapshot()
        if not resume:
            tb.custom_scalars(DASHBOARD)
            tb.hparams(self._hparams(), {"eval/team_return": float("nan")})
        old_handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=cfg.train.steps, initial=min(p.env_steps, cfg.train.steps), unit="step", dynamic_ncols=True,
                   disable=self.quiet or not sys.stderr.isatty(), desc=f"train {self.run_dir.name}")
        start = time.perf_counter()
        wall_at_start = p.wall_seconds
        rate_t, rate_steps = start, p.env_steps
        num_envs = cfg.env.num_envs
        try:
            while p.env_steps < cfg.train.steps and self.status == "running":
                actions = self.algo.act(obs, explore=True)
                if not np.isfinite(actions).all():  # mpe2 would raise on a NaN action
                    self._on_nonfinite(logger, 1, f"non-finite action at env step {p.env_steps}", fatal=True)
                    if self.status != "running":
                        break
                    continue
                step = self.venv.step(actions)
                self.algo.observe(obs, actions, step.reward, step.next_obs, step.terminated, step.done)
                self._action_window.append(actions)
                prev_steps = p.env_steps
                p.env_steps += num_envs
                if step.episodes:
                    p.episodes += len(step.episodes)
                    self._log_episodes(logger, step.episodes)
                for _ in range(self.algo.pending_updates()):
                    try:
                        stats = self.algo.update()
                    except NonFiniteParameters as e:
                        self._on_nonfinite(logger, 1, str(e), fatal=True)
                    else:
                        self._history.append({"env_steps": p.env_steps, "update": self.algo.updates, **stats})
                        self._log_update(logger, stats, log=self.algo.updates % cfg.train.log_every == 0)
                        if self.algo.updates % cfg.train.histogram_every == 0:
                            self._log_histograms(logger)
                        bad = int(stats.get("health/nonfinite_updates", 0))
                        if bad:
                            self._on_nonfinite(logger, bad, f"{bad} non-finite loss/gradient steps skipped in update {self.algo.updates}", fatal=False)
                        elif self._rollback and self.algo.updates % cfg.train.snapshot_every == 0:
                            self._snapshot = self.algo.snapshot()
                    if self.status != "running":
                        break
                if len(self._action_window) > 64:  # bounded memory when updates are rare
                    self._action_window = self._action_window[-64:]
                obs = step.obs
                bar.update(num_envs)
                if self.status != "running":
                    break
                if p.env_steps // cfg.train.eval_every > prev_steps // cfg.train.eval_every:
                    self._log_eval(logger)
                    now = time.perf_counter()
                    logger.record("perf/env_steps_per_second", (p.env_steps - rate_steps) / max(now - rate_t, 1e-9), p.env_steps)
                    rate_t, rate_steps = now, p.env_steps
                    bar.set_postfix(eval_return=f"{p.final_return:.1f}")
                self._log_detector_events(logger)  # before a checkpoint, so a resume does not repeat them
                if p.env_steps // cfg.train.checkpoint_every > prev_steps // cfg.train.checkpoint_every:
                    p.wall_seconds = wall_at_start + time.perf_counter() - start
                    self._save_checkpoint(obs)
                if self._stop_requested:
                    self.status = "interrupted"
            if self.status == "running":
                if not p.eval_history or p.eval_history[-1]["env_steps"] != p.env_steps:
                    self._log_eval(logger)
                self._log_detector_events(logger)
                self.status = "completed"
            if self.status in ("completed", "interrupted"):
                p.wall_seconds = wall_at_start + time.perf_counter() - start
                self._save_checkpoint(obs)
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            bar.close()
            p.wall_seconds = wall_at_start + time.perf_counter() - start
            if self.status == "running":  # an exception escaped: still leave an honest summary
                self.status = "crashed"
            summary = self._summary()
            logger.text("summary", f"status: {self.status}, final_return: {summary['final_return']}", p.env_steps)
            logger.flush()
            logger.close()
            atomic_write_json(self.run_dir / "summary.json", summary)
            self.venv.close()
        return summary
