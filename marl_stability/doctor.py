"""``marl-stability doctor RUN_DIR``: read a run's events and summary, say what went wrong and what to try.

The fixes are ranked in the practitioner's order (gradient clipping and learning rate first, then
initialization and output activation, then architecture and optimizer), each with the exact ``--set``
override, and promoted when the run's own data points at it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from marl_stability.config import DetectorConfig
from marl_stability.errors import UserError
from marl_stability.summary import RunSummary, read_summary
from marl_stability.tb_run import current_tag

GROWTH_FACTOR = 10.0  # a layer's gradient "grew" when it exceeds this multiple of its early median


@dataclass
class Fix:
    order: int  # practitioner's order (lower = try first)
    name: str
    overrides: list[str]
    why: str = ""
    evidence: bool = False  # the run's data points at this fix
    applied: bool = False  # the run already uses it: not suggested


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {current_tag(tag): [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _first_growth(series: list[tuple[int, float]]) -> tuple[int, float] | None:
    """(first step where the norm exceeds GROWTH_FACTOR x its early median, peak/early ratio) or None."""
    values = np.array([v for _, v in series], float)
    finite = values[np.isfinite(values)]
    if len(finite) < 10:
        return None
    early = float(np.median(finite[: max(5, len(finite) // 10)]))
    if early <= 0:
        return None
    peak = float(finite.max()) / early if np.isfinite(values).all() else math.inf
    for step, v in series:
        if not math.isfinite(v) or v > GROWTH_FACTOR * early:
            return step, peak
    return None


def _last(scalars: dict[str, list[tuple[int, float]]], prefix: str) -> dict[str, float]:
    return {tag[len(prefix):]: s[-1][1] for tag, s in scalars.items() if tag.startswith(prefix) and s}


@dataclass
class Evidence:
    """What the run's TensorBoard scalars say, beyond the detectors in summary.json."""

    grew: list[tuple[int, float, str]]  # (env step, -growth, layer): per network, the layer whose gradient grew first
    saturation: dict[str, float]  # agent -> final evaluation's value
    sensitivity: dict[str, float]
    repeat: dict[str, float]
    reward_magnitude: float | None  # median |raw batch reward|
    max_preactivation: float | None  # largest |actor output pre-activation| seen


def diagnose(run_dir: str | Path) -> dict[str, Any]:
    run = Path(run_dir)
    summary, cfg = _read_run(run)
    ev = _evidence(read_scalars(run))
    s = summary if summary is not None else RunSummary(status="")  # no summary.json: nothing fired, no status
    fixes = [f for f in _candidate_fixes(s, cfg, ev) if not f.applied]
    # Keep the practitioner's order, but within it the fixes the data points at come first.
    fixes.sort(key=lambda f: (f.order, not f.evidence))
    explosion, collapse, nonfinite = s.explosion_step, s.collapse_step, s.nonfinite_step
    healthy = explosion is None and collapse is None and nonfinite is None
    return {
        "verdict": "healthy" if healthy else "unstable",
        "run": str(run), "status": summary.status if summary is not None else None, "final_return": s.final_return,
        "error": s.error,
        "explosion_step": explosion, "collapse_step": collapse, "nonfinite_step": nonfinite,
        "detector_messages": s.detector_messages,
        "layers_grew_first": [{"layer": layer, "env_step": step, "growth": -neg} for step, neg, layer in ev.grew[:6]],
        "saturation": ev.saturation, "repeat_rate": ev.repeat, "sensitivity": ev.sensitivity,
        "max_preactivation": ev.max_preactivation, "reward_magnitude": ev.reward_magnitude,
        "large_reward": _large_reward(cfg, ev),
        "fixes": [{"name": f.name, "set": f.overrides, "why": f.why} for f in fixes],
    }


def _read_run(run: Path) -> tuple[RunSummary | None, dict[str, Any]]:
    """The run's summary (None when it has none yet) and its config as a plain mapping ({} when absent)."""
    if not run.is_dir():
        raise UserError(f"not a run directory: {run}")
    if not any(run.glob("events.out.tfevents.*")):
        raise UserError(f"no TensorBoard events in {run}")
    summary = None
    if (run / "summary.json").is_file():
        summary = read_summary(run / "summary.json")
        if summary is None:
            raise UserError(f"corrupt summary.json or config.yaml in {run}")
    try:
        config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise UserError(f"corrupt summary.json or config.yaml in {run}") from None
    if not isinstance(config or {}, dict):
        raise UserError(f"summary.json or config.yaml in {run} is not a mapping")
    return summary, config or {}


def _evidence(scalars: dict[str, list[tuple[int, float]]]) -> Evidence:
    # Per network ("critic/agent_0"), the layer whose gradient grew first (ties: the one that grew most).
    first_by_net: dict[str, tuple[int, float, str]] = {}
    for tag, series in scalars.items():
        if not tag.startswith("layers/grad_norm/"):
            continue
        layer = tag[len("layers/grad_norm/"):]
        found = _first_growth(series)
        if found is None:
            continue
        net = layer.rsplit("/", 1)[0]
        cand = (found[0], -found[1], layer)
        if net not in first_by_net or cand < first_by_net[net]:
            first_by_net[net] = cand
    raw_reward = [abs(v) for tag, s in scalars.items() if tag.startswith("reward/raw_batch_mean/") for _, v in s]
    preact = [v for tag, s in scalars.items() if tag.startswith("policy/preact_max_abs_batch/") for _, v in s]
    return Evidence(
        grew=sorted(first_by_net.values()),
        saturation=_last(scalars, "eval/saturation/"),
        sensitivity=_last(scalars, "eval/sensitivity/"),
        repeat=_last(scalars, "eval/repeat_rate/"),
        reward_magnitude=float(np.median(raw_reward)) if raw_reward else None,
        max_preactivation=float(np.nanmax(preact)) if preact else None,
    )


def _section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


def _large_reward(cfg: dict[str, Any], ev: Evidence) -> bool:
    reward_mag = ev.reward_magnitude
    return (_section(cfg, "env").get("reward_scale", 1.0) or 1.0) > 1.0 or (reward_mag is not None and reward_mag > 10)


def _candidate_fixes(s: RunSummary, cfg: dict[str, Any], ev: Evidence) -> list[Fix]:
    """Every fix in the practitioner's order, with why this run's data points at it and whether it is applied."""
    explosion, collapse = s.explosion_step, s.collapse_step
    env_cfg, fixes_cfg, actor_cfg = _section(cfg, "env"), _section(cfg, "fixes"), _section(cfg, "actor")
    lr = _section(cfg, "critic_optim").get("lr")
    clip_mode = ((fixes_cfg.get("grad_clip") or {}).get("critic") or {}).get("mode", "none")
    output = actor_cfg.get("output")
    # The run's own collapse threshold (detectors.saturation_threshold), not a second constant.
    threshold = _section(cfg, "detectors").get("saturation_threshold", DetectorConfig().saturation_threshold)
    saturated = bool(ev.saturation) and max(ev.saturation.values()) >= threshold
    big_reward, reward_mag, max_preact = _large_reward(cfg, ev), ev.reward_magnitude, ev.max_preactivation
    return [
        Fix(1, "clip gradients (global L2 norm)",
            ["fixes.grad_clip.critic.mode=global_norm", "fixes.grad_clip.critic.max=1.0",
             "fixes.grad_clip.actor.mode=global_norm", "fixes.grad_clip.actor.max=1.0"],
            f"critic gradients exploded at env step {explosion} and clipping is off" if explosion is not None and clip_mode == "none" else "",
            explosion is not None and clip_mode == "none", applied=clip_mode != "none"),
        Fix(2, "lower the learning rate", ["actor_optim.lr=0.001", "critic_optim.lr=0.001"],
            f"lr is {lr}; with Adam, norm clipping does not shrink the step size" if lr and lr > 1e-3 and (explosion is not None or collapse is not None) else "",
            bool(lr and lr > 1e-3 and (explosion is not None or collapse is not None)), applied=bool(lr and lr <= 1e-3)),
        Fix(2, "scale or normalize the reward", ["fixes.reward.mode=normalize"],
            f"rewards are large (reward_scale {env_cfg.get('reward_scale', 1.0)}, median |batch reward| {reward_mag:.3g})" if big_reward and reward_mag is not None else "",
            big_reward, applied=(fixes_cfg.get("reward") or {}).get("mode", "none") != "none"),
        Fix(3, "small last-layer init", ["actor.last_layer_init=0.003"],
            f"output pre-activations reached {max_preact:.3g}" if max_preact is not None and max_preact > 10 and actor_cfg.get("last_layer_init") is None else "",
            bool(max_preact is not None and max_preact > 10 and actor_cfg.get("last_layer_init") is None),
            applied=actor_cfg.get("last_layer_init") is not None),
        Fix(3, "tanh output scaled to the action bounds", ["actor.output=tanh_scaled"],
            f"actor output is {output}: the critic is queried outside the range the env applies" if output in ("linear_clip", "softsign", "tanh") else "",
            output in ("linear_clip", "softsign", "tanh"), applied=output in ("tanh_scaled", "auto")),
        Fix(3, "normalize observations", ["fixes.obs_norm.enabled=true"],
            "observations are rescaled/offset by the env wrapper" if env_cfg.get("obs_scale", 1.0) != 1.0 or env_cfg.get("obs_offset", 0.0) != 0.0 else "",
            (env_cfg.get("obs_scale", 1.0) != 1.0 or env_cfg.get("obs_offset", 0.0) != 0.0),
            applied=bool((fixes_cfg.get("obs_norm") or {}).get("enabled", False))),
        Fix(4, "normalization layers", ["actor.norm=layernorm", "critic.norm=layernorm"],
            applied=actor_cfg.get("norm", "none") != "none"),
        Fix(4, "residual blocks", ["actor.residual=true", "critic.residual=true"], applied=bool(actor_cfg.get("residual"))),
        Fix(4, "openai/maddpg's pre-activation penalty", ["fixes.actor_preact_l2=0.001"],
            "outputs collapsed into saturation" if saturated and collapse is not None else "",
            saturated and collapse is not None, applied=(fixes_cfg.get("actor_preact_l2", 0.0) or 0.0) > 0),
        Fix(5, "Huber critic loss", ["maddpg.critic_loss=huber"],
            applied=_section(cfg, "maddpg").get("critic_loss") == "huber"),
    ]


def render(d: dict[str, Any]) -> str:
    lines = [f"run {d['run']}: status {d['status']}, final team return {d['final_return']}"]
    fired = [(k, d[k]) for k in ("explosion_step", "collapse_step", "nonfinite_step") if d[k] is not None]
    if fired:
        lines.append("detectors fired: " + ", ".join(f"{k.replace('_step', '')} at env step {v}" for k, v in fired))
        lines += [f"  - {m}" for m in d["detector_messages"]]
    else:
        lines.append("no detector fired: no gradient explosion, no action collapse, no non-finite values")
    if d["status"] == "env_error":  # the env failed (summary.json error): not something a learning fix cures
        lines.append(f"the environment failed: {d['error']}")
    if d["verdict"] == "healthy":
        lines.append("verdict: healthy; nothing in this run calls for a fix" if d["status"] != "env_error" else
                     "verdict: no training instability; fix the environment, then continue the run with --resume")
        return "\n".join(lines)
    if d["layers_grew_first"]:
        lines.append(f"networks whose gradients grew >{GROWTH_FACTOR:g}x their early level, earliest first (with the layer that grew first):")
        lines += [f"  - {g['layer']} at env step {g['env_step']} (peak {g['growth']:.3g}x)" for g in d["layers_grew_first"]]
    if d["saturation"]:
        lines.append("final evaluation, per agent: " + "; ".join(
            f"{a}: saturation {d['saturation'][a]:.2f}, repeat {d['repeat_rate'].get(a, float('nan')):.2f}, "
            f"sensitivity {d['sensitivity'].get(a, float('nan')):.3g}" for a in d["saturation"]))
    if d["reward_magnitude"] is not None:
        lines.append(f"median |reward| per agent step: {d['reward_magnitude']:.3g}" + (" (large)" if d["large_reward"] else ""))
    lines.append("verdict: unstable. Fixes to try, in order (practitioner's order; ones this run's data points at first):")
    for i, f in enumerate(d["fixes"], 1):
        sets = " ".join(f"--set {s}" for s in f["set"])
        lines.append(f"  {i}. {f['name']}: {sets}" + (f"\n     why: {f['why']}" if f["why"] else ""))
    return "\n".join(lines)
