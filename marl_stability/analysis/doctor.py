"""``marl-stability doctor RUN_DIR``: read a run's events and summary, say what went wrong and what to try.

For an off-policy run it names the mechanism (``marl_stability.analysis.mechanism``: explosion-first, saturation-first
or neither) with the env step at which each signal moved, and ranks the fixes by what the single-fix table of
that mechanism measured (``marl_stability/fixes/fix_evidence.json``: seeds left healthy, then mean final return),
quoting the numbers: fixes that cured seeds first, then the fixes not measured for it (in the practitioner's
order, the ones this run's data points at first), then the measured fixes that cured no seed. A failed
on-policy run is ranked the same way by the on-policy table (MAPPO's single-fix sweep). Without a
mechanism (a healthy run) the fixes keep the practitioner's order (gradient clipping and
learning rate first, then initialization and output activation, then architecture and optimizer), promoted
when the run's own data points at them. Every fix comes with its exact ``--set`` overrides.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marl_stability.config import DetectorConfig, RunConfig, apply_override
from marl_stability.core.live import healed_config
from marl_stability.core.roads import ON_POLICY
from marl_stability.fixes import benchmarl as benchmarl_fixes
from marl_stability.fixes import evidence, registry
from marl_stability.core.summary import RunSummary
from marl_stability.core.tb_run import heal_line
from marl_stability.errors import UserError
from marl_stability.runs.record import RunRecord, find_run_dirs

GROWTH_FACTOR = 10.0  # a layer's gradient "grew" when it exceeds this multiple of its early median


@dataclass
class Fix:
    order: int  # practitioner's order (lower = try first)
    name: str
    overrides: list[str]
    why: str = ""
    evidence: bool = False  # the run's data points at this fix
    applied: bool = False  # the run already uses it: not suggested
    id: str = ""  # the fix registry's id


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
    record = RunRecord(run_dir)
    summary, cfg = _read_run(record)
    cfg = _as_ended(cfg, summary)
    scalars, run = record.scalars, record.dir
    ev = _evidence(scalars)
    s = summary if summary is not None else RunSummary(status="")  # no summary.json: nothing fired, no status
    explosion, collapse, nonfinite = s.explosion_step, s.collapse_step, s.nonfinite_step
    healthy = explosion is None and collapse is None and nonfinite is None
    result = outcome(record)
    if record.on_policy:
        failing = result is not None and result["label"] != "healthy"
        d = diagnose_on_policy(run, s, summary, cfg, ev, scalars, failing)
        return _with_outcome(d, result, s.healing, _unmeasured(s, ON_POLICY), cfg.get("framework"))
    fixes = [f for f in _candidate_fixes(s, cfg, ev) if not f.applied]
    # Keep the practitioner's order, but within it the fixes the data points at come first.
    fixes.sort(key=lambda f: (f.order, not f.evidence))
    mech = _mechanism(summary, cfg, scalars, record.do_nothing)
    measured = _measured(mech["mechanism"]) if mech is not None else {}
    fixes = _rank_by_evidence(fixes, measured)
    failing = mech is not None and mech["label"] != "healthy"
    return _with_outcome({
        "verdict": "healthy" if healthy and not failing else "unstable",
        "mechanism": mech, "evidence_source": measured.get("", {}).get("source") if measured else None,
        "run": str(run), "status": summary.status if summary is not None else None, "final_return": s.final_return,
        "error": s.error,
        "explosion_step": explosion, "collapse_step": collapse, "nonfinite_step": nonfinite,
        "detector_messages": s.detector_messages,
        "layers_grew_first": [{"layer": layer, "env_step": step, "growth": -neg} for step, neg, layer in ev.grew[:6]],
        "saturation": ev.saturation, "repeat_rate": ev.repeat, "sensitivity": ev.sensitivity,
        "max_preactivation": ev.max_preactivation, "reward_magnitude": ev.reward_magnitude,
        "large_reward": _large_reward(cfg, ev),
        "fixes": [{"name": f.name, "id": f.id, "set": f.overrides, "why": f.why, "measured": measured.get(f.name)} for f in fixes],
    }, result, s.healing, _unmeasured(s, mech["mechanism"] if mech is not None else None), cfg.get("framework"))


def _as_ended(cfg: dict[str, Any], summary: RunSummary | None) -> dict[str, Any]:
    """The config a run ended with: config.yaml plus the settings its heals applied (``train.heal``), so the advice
    does not offer a fix the run already took."""
    settings = [item for h in (summary.healing if summary is not None else []) for item in h.get("settings") or []]
    if not settings:
        return cfg
    try:  # validated, so "1e-05" is the number the run used
        return healed_config(RunConfig.model_validate(cfg), settings).to_dict()
    except (UserError, ValueError):
        ended = copy.deepcopy(cfg)
        for item in settings:
            apply_override(ended, item)
        return ended


def outcome(record: RunRecord) -> dict[str, Any] | None:
    """The finished run's label (``runs.labels``: healthy, collapsed, diverged or degraded, with its kind and onset),
    judged against the task's do-nothing return, with what the label rests on: the final and best team returns,
    the drop from the best against the run's evaluation noise, the peak gradient norms. None for a run that has
    not finished (no final evaluation to judge)."""
    s = record.summary
    if s is None or s.status not in ("completed", "diverged"):
        return None
    from marl_stability.core.returns import drop_from_best

    lab = record.label
    returns = [r for _, r in s.returns()]
    drop, noise = drop_from_best(returns)
    return {"label": lab.label, "kind": lab.kind, "onset": lab.onset, "do_nothing": record.do_nothing,
            "final_return": s.final_return, "best_return": s.best_return, "drop_from_best": drop, "eval_noise": noise,
            "max_grad_norm": dict(s.max_grad_norm)}


def _unmeasured(s: RunSummary, mechanism: str | None) -> str | None:
    """Why the fix tables may not speak for this run (each was measured with one algorithm on one task), or None."""
    table = ((evidence.load().get("mechanisms") or {}).get(mechanism or "") or {})
    if not table:
        return f"no single-fix table was measured for {'on-policy runs' if s.on_policy else 'this road'}"
    algo = evidence.table_algo(table)
    if s.env != table.get("env") or s.algo != algo:
        return f"the {mechanism} fix table was measured with {algo.upper()} on {table.get('env')}; this run is {s.algo} on {s.env}"
    return None


def _with_outcome(d: dict[str, Any], result: dict[str, Any] | None, healing: list[dict[str, Any]],
                  unmeasured: str | None, framework: str | None = None) -> dict[str, Any]:
    """A run whose outcome is not healthy (e.g. below the do-nothing return) is never called healthy. ``healing``:
    the run's heals (``train.heal``), reported with it; ``unmeasured``: why the fix tables may not apply (doctor then
    points to ``cure``)."""
    d["outcome"], d["healing"], d["unmeasured"] = result, healing, unmeasured
    d["framework"] = framework
    if result is not None and result["label"] != "healthy":
        d["verdict"] = "unstable"
    return d


def _mechanism(summary: RunSummary | None, cfg: dict[str, Any], scalars: dict[str, list[tuple[int, float]]],
               do_nothing: float | None = None) -> dict[str, Any] | None:
    """The run's mechanism (None without a finished summary: no final evaluation to label)."""
    if summary is None or summary.status not in ("completed", "diverged"):
        return None
    from marl_stability.analysis.mechanism import (
        classify,  # mechanism is a larger import, needed only for finished runs
    )

    return classify(summary, cfg, scalars, do_nothing)


def _measured(mechanism: str) -> dict[str, dict[str, Any]]:
    return evidence.measured(mechanism)


def _rank_by_evidence(fixes: list[Fix], measured: dict[str, dict[str, Any]]) -> list[Fix]:
    return evidence.rank_by_evidence(fixes, measured, lambda f: f.name)


def targets(paths: list[Path]) -> list[Path]:
    """The runs to diagnose: each path that is a run itself, else the runs below it (a folder holding no run is
    passed on as it is, for diagnose's one-line error)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir() or RunRecord(path).has_events() or (path / "config.yaml").is_file():
            out.append(path)
        else:
            out += find_run_dirs([path]) or [path]
    return out


def _read_run(run: RunRecord) -> tuple[RunSummary | None, dict[str, Any]]:
    """The run's summary (None when it has none yet) and its config as a plain mapping ({} when absent)."""
    if not run.dir.is_dir():
        raise UserError(f"not a run directory: {run.dir}")
    if not run.has_events():
        raise UserError(f"no TensorBoard events in {run.dir}")
    if ((run.dir / "summary.json").is_file() and run.summary is None) or \
            ((run.dir / "config.yaml").is_file() and run.config is None):
        raise UserError(f"corrupt summary.json or config.yaml in {run.dir}")
    return run.summary, run.config or {}


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


_section = registry.section  # one reader of a raw config's sections, shared with the fix registry


def _rescaled_obs(env_cfg: dict[str, Any]) -> bool:
    """The env wrapper rescales or offsets observations (the failure presets' way to induce it)."""
    return env_cfg.get("obs_scale", 1.0) != 1.0 or env_cfg.get("obs_offset", 0.0) != 0.0


def _large_reward(cfg: dict[str, Any], ev: Evidence) -> bool:
    reward_mag = ev.reward_magnitude
    return (_section(cfg, "env").get("reward_scale", 1.0) or 1.0) > 1.0 or (reward_mag is not None and reward_mag > 10)


def _advice(family: str, cfg: dict[str, Any], reasons: dict[str, tuple[str, bool]]) -> list[Fix]:
    """The registry's fixes for ``family`` in the practitioner's order, each with this run's reason (why, and whether
    the data points at it) and whether the run already uses it. A registered fix without a reason here is still
    advised, without a why."""
    specs = registry.for_family(family)
    assert set(reasons) <= {spec.id for spec in specs}, set(reasons) - {spec.id for spec in specs}  # a typo'd id
    fixes = [Fix(spec.order[family], spec.title, spec.overrides_for(cfg), *reasons.get(spec.id, ("", False)),
                 applied=spec.applied(cfg), id=spec.id) for spec in specs]
    if cfg.get("framework") == benchmarl_fixes.FRAMEWORK:  # a BenchMARL run: its own settings, or why it has none
        for f in fixes:
            f.overrides, missing = benchmarl_fixes.settings_for(f.id, _section(cfg, benchmarl_fixes.BENCHMARL))
            if missing:
                f.why = "; ".join(x for x in (f.why, f"BenchMARL: {missing}") if x)
    return fixes


def _candidate_fixes(s: RunSummary, cfg: dict[str, Any], ev: Evidence) -> list[Fix]:
    """Every off-policy fix in the practitioner's order, with why this run's data points at it and whether it is
    applied."""
    explosion, collapse = s.explosion_step, s.collapse_step
    env_cfg, actor_cfg = _section(cfg, "env"), _section(cfg, "actor")
    lr = _section(cfg, "critic_optim").get("lr")
    clip_off = not registry.get("grad_clip").applied(cfg)
    output = actor_cfg.get("output")
    # The run's own collapse threshold (detectors.saturation_threshold), not a second constant.
    threshold = _section(cfg, "detectors").get("saturation_threshold", DetectorConfig().saturation_threshold)
    saturated = bool(ev.saturation) and max(ev.saturation.values()) >= threshold
    big_reward, reward_mag, max_preact = _large_reward(cfg, ev), ev.reward_magnitude, ev.max_preactivation
    sgd = not registry.get("adam").applied(cfg)  # an SGD optimizer in actor or critic
    high_lr = bool(lr and (lr > 1e-3 or sgd) and (explosion is not None or collapse is not None))
    big_preact = bool(max_preact is not None and max_preact > 10 and actor_cfg.get("last_layer_init") is None)
    unbounded = output in ("linear_clip", "softsign", "tanh")
    rescaled_obs = _rescaled_obs(env_cfg)
    return _advice(registry.OFF, cfg, {
        "grad_clip": (f"critic gradients exploded at env step {explosion} and clipping is off"
                      if explosion is not None and clip_off else "", explosion is not None and clip_off),
        "lower_lr": (f"lr is {lr}; " + ("SGD's step is lr x gradient" if sgd else "with Adam, norm clipping does not "
                                         "shrink the step size") if high_lr else "", high_lr),
        "reward_scale": (f"rewards are large (reward_scale {env_cfg.get('reward_scale', 1.0)}, median |batch reward| "
                         f"{reward_mag:.3g})" if big_reward and reward_mag is not None else "", big_reward),
        "small_init": (f"output pre-activations reached {max_preact:.3g}" if big_preact else "", big_preact),
        "tanh_scaled": (f"actor output is {output}: the critic is queried outside the range the env applies"
                        if unbounded else "", unbounded),
        "obs_norm": ("observations are rescaled/offset by the env wrapper" if rescaled_obs else "", rescaled_obs),
        "preact_penalty": ("outputs collapsed into saturation" if saturated and collapse is not None else "",
                           saturated and collapse is not None),
        "adam": ("SGD's step grows with the gradient: an exploding critic moves its weights (and, through dQ/da, the "
                 "actor's) further every update" if explosion is not None and sgd else "", explosion is not None and sgd),
    })


def render(d: dict[str, Any]) -> str:
    lines = [f"run {d['run']}: status {d['status']}, final team return {d['final_return']}"]
    fired = [(k, d[k]) for k in ("explosion_step", "collapse_step", "nonfinite_step", "entropy_collapse_step",
                                 "kl_spike_step") if d.get(k) is not None]
    if fired:
        lines.append("detectors fired: " + ", ".join(f"{k.replace('_step', '')} at env step {v}" for k, v in fired))
        lines += [f"  - {m}" for m in d["detector_messages"]]
    else:
        lines.append("no detector fired: no gradient explosion, no action collapse, no non-finite values")
    if d["status"] == "env_error":  # the env failed (summary.json error): not something a learning fix cures
        lines.append(f"the environment failed: {d['error']}")
    lines += _outcome_lines(d.get("outcome"))
    lines += _mechanism_lines(d.get("mechanism"))
    healed = [h for h in d.get("healing") or [] if h.get("fix")]
    if d.get("healing"):
        lines.append(f"train.heal acted {len(healed)} time(s) (env steps are not rewound: the lost ones count in the budget):")
        lines += [f"  - {heal_line(h)}; outcome: {h['outcome']}" for h in d["healing"]]
    if d["verdict"] == "healthy":
        lines.append("verdict: healthy; nothing in this run calls for a fix" if d["status"] != "env_error" else
                     "verdict: no training instability; fix the environment, then continue the run with --resume")
        if healed:
            lines.append(f"  (healthy after {len(healed)} heal(s): a new run with the fixes it ended with: "
                         f"marl-stability train -c {Path(d['run']) / 'healed.yaml'})")
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
    if d.get("on_policy"):
        lines.append("on-policy signals: " + "; ".join(f"{k} {v:.3g}" for k, v in d["on_policy"].items() if v is not None))
    if d.get("evidence_source"):
        lines.append(f"verdict: unstable. Fixes to try, in order (ranked by {d['evidence_source']}: seeds left "
                     "healthy, then mean final return; fixes it did not measure in between, in the practitioner's order):")
    else:
        lines.append("verdict: unstable. Fixes to try, in order (practitioner's order; ones this run's data points at first):")
    benchmarl = d.get("framework") == benchmarl_fixes.FRAMEWORK
    for i, f in enumerate(d["fixes"], 1):
        sets = (", ".join(f["set"]) or "(no BenchMARL setting)") if benchmarl else " ".join(f"--set {s}" for s in f["set"])
        lines.append(f"  {i}. {f['name']}: {sets}" + (f"\n     measured: {_measured_text(f['measured'])}" if f.get("measured") else "")
                     + (f"\n     why: {f['why']}" if f["why"] else ""))
    if benchmarl:
        lines.append("a BenchMARL run: apply a fix to its configs with marl_stability.integrations.benchmarl.apply_fix("
                     "FIX_ID, experiment_config, algorithm_config, model_config, critic_model_config) (fix ids: "
                     + ", ".join(f["id"] for f in d["fixes"] if f["set"]) + "); docs/benchmarl.md")
        return "\n".join(lines)
    if d.get("unmeasured"):
        lines.append(f"{d['unmeasured']}: measure these fixes on this run itself with "
                     f"marl-stability cure {d['run']} (docs/heal.md)")
    if not d.get("healing"):
        lines.append("or let the run heal itself: --set train.heal.enabled=true rolls back to before the onset and "
                     "applies the first of these fixes a running run can take (docs/heal.md)")
    return "\n".join(lines)


def _outcome_lines(o: dict[str, Any] | None) -> list[str]:
    if not o:
        return []
    kind = f" ({o['kind'].replace('_', ' ')})" if o["kind"] else ""
    line = f"outcome: {o['label']}{kind}" + (f" from env step {o['onset']}" if o["onset"] is not None else "")
    lines = [line]
    if o["final_return"] is not None:
        anchor = (f"; the task's do-nothing policy scores {o['do_nothing']:.1f}" if o["do_nothing"] is not None else "")
        best = f", best {o['best_return']:.1f}" if o["best_return"] is not None else ""
        lines.append(f"  final team return {o['final_return']:.1f}{best}; the last evaluations are "
                     f"{o['drop_from_best']:.1f} below the run's best (evaluation noise {o['eval_noise']:.2g}){anchor}")
    if o["label"] == "degraded" and o["max_grad_norm"]:
        lines.append("  peak pre-clip gradient norms: " + ", ".join(f"{k} {v:.3g}" for k, v in o["max_grad_norm"].items()))
    return lines


def _mechanism_lines(mech: dict[str, Any] | None) -> list[str]:
    if not mech:
        return []
    lines = [f"mechanism: {mech['mechanism']} ({mech['why']})", "when each signal moved (env steps):"]
    lines += [f"  {e['env_step']:>9}  {e['event']}" for e in mech["timeline"]]
    return lines


def _measured_text(m: dict[str, Any]) -> str:
    ret = m.get("mean_final_return")
    return (f"left {m['healthy']}/{m['n']} seeds healthy ({', '.join(m['labels'])})"
            + (f", mean final team return {ret:.1f}" if ret is not None else ""))


# --------------------------------------------------------------------------- on-policy runs (MAPPO / IPPO)
CLIP_FRACTION_HIGH = 0.3  # more than 30% of the samples outside the clip range: the update leaves the trust region
LOG_STD_HIGH = 0.0  # a Gaussian std above half the action range: mostly clipped samples


def _series_max(scalars: dict[str, list[tuple[int, float]]], prefix: str) -> tuple[float, int] | None:
    """(largest finite value, its env step) over every tag under ``prefix`` (None when there is none)."""
    best: tuple[float, int] | None = None
    for tag, series in scalars.items():
        if tag.startswith(prefix):
            for step, v in series:
                if math.isfinite(v) and (best is None or v > best[0]):
                    best = (v, step)
    return best


def on_policy_signals(scalars: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    """The on-policy update statistics doctor reasons about: peaks (with their env step) and final values."""
    last = lambda prefix: min(_last(scalars, prefix).values(), default=None)  # noqa: E731 -- worst agent
    return {"kl_max": _series_max(scalars, "policy/approx_kl/"), "clip_fraction_max": _series_max(scalars, "policy/clip_fraction/"),
            "log_std_max": _series_max(scalars, "policy/log_std_max/"), "value_loss_max": _series_max(scalars, "loss/value/"),
            "entropy_final": last("policy/entropy/"), "explained_variance_final": last("value/explained_variance/")}


def _on_policy_fixes(s: RunSummary, cfg: dict[str, Any], ev: Evidence, sig: dict[str, Any]) -> list[Fix]:
    """The on-policy fixes, each with the evidence line that points at it (empty: no evidence in this run)."""
    ppo, env_cfg = _section(cfg, "ppo"), _section(cfg, "env")
    lr, eps = _section(cfg, "actor_optim").get("lr"), _section(cfg, "actor_optim").get("eps")
    kl, clipf, log_std, vloss = sig["kl_max"], sig["clip_fraction_max"], sig["log_std_max"], sig["value_loss_max"]
    trust = []
    if s.kl_spike_step is not None:
        trust.append(f"approx KL spiked at env step {s.kl_spike_step} (peak {kl[0]:.3g})" if kl else f"KL spike at {s.kl_spike_step}")
    if clipf and clipf[0] > CLIP_FRACTION_HIGH:
        trust.append(f"PPO clip fraction reached {clipf[0]:.2f} at env step {clipf[1]}")
    if s.nonfinite_step is not None:
        trust.append(f"non-finite values at env step {s.nonfinite_step}")
    big_reward = _large_reward(cfg, ev)
    sat = max(ev.saturation.values(), default=0.0)
    gaussian = ppo.get("distribution", "auto") in ("auto", "gaussian")
    entropy_low = s.entropy_collapse_step is not None
    big_vloss = bool(vloss and vloss[0] > 10)
    wide = bool(log_std and log_std[0] > LOG_STD_HIGH)
    high_clip = bool(clipf and clipf[0] > CLIP_FRACTION_HIGH)
    poor_fit = sig["explained_variance_final"] is not None and sig["explained_variance_final"] < 0.2
    rescaled_obs = _rescaled_obs(env_cfg)
    return _advice(registry.ON, cfg, {
        "lr_eps": ("; ".join(trust) + (f" (lr {lr}, eps {eps})" if trust else ""), bool(trust)),
        "grad_clip_10": (f"gradients exploded at env step {s.explosion_step} and clipping is off"
                         if s.explosion_step is not None else "", s.explosion_step is not None),
        "value_norm": (f"value loss peaked at {vloss[0]:.3g} (env step {vloss[1]}) with raw-scale returns" if big_vloss
                       else ("rewards are large and the critic regresses them unnormalized" if big_reward else ""),
                       big_vloss or big_reward),
        "reward_scale": (f"rewards are large (reward_scale {env_cfg.get('reward_scale', 1.0)}, median |batch reward| "
                         f"{ev.reward_magnitude:.3g})" if big_reward and ev.reward_magnitude is not None else "",
                         big_reward),
        "entropy": (f"policy entropy collapsed from env step {s.entropy_collapse_step} (final {sig['entropy_final']:.3g} "
                    "per action dimension)" if entropy_low and sig["entropy_final"] is not None else "", entropy_low),
        "log_std_bounds": (f"log-std reached {log_std[0]:.3g} at env step {log_std[1]}: a Gaussian wider than the "
                           "action range, mostly clipped" if wide else
                           ("the entropy collapsed with an unbounded log-std" if entropy_low else ""), wide or entropy_low),
        "beta": (f"actions end at the bounds (evaluation saturation {sat:.2f}) with a Gaussian clipped by the env"
                 if gaussian and sat >= 0.9 else "", gaussian and sat >= 0.9),
        "fewer_epochs": (f"PPO clip fraction reached {clipf[0]:.2f}" if high_clip else "", high_clip),
        "huber_value": (f"the value fit is poor (explained variance {sig['explained_variance_final']:.2f})"
                        if poor_fit else "", bool(poor_fit)),
        "obs_norm": ("observations are rescaled/offset by the env wrapper" if rescaled_obs else "", rescaled_obs),
    })


def diagnose_on_policy(run: Path, s: RunSummary, summary: RunSummary | None, cfg: dict[str, Any], ev: Evidence,
                       scalars: dict[str, list[tuple[int, float]]], failing: bool = False) -> dict[str, Any]:
    """``diagnose`` for MAPPO/IPPO: the fixes the run's data points at come first (strongest evidence first),
    each with its evidence line; then the other fixes not yet applied, in the practitioner's order. A run that
    failed (an alarm, or an outcome that is not healthy) has them ranked by the on-policy single-fix table."""
    sig = on_policy_signals(scalars)
    fixes = [f for f in _on_policy_fixes(s, cfg, ev, sig) if not f.applied]
    fixes.sort(key=lambda f: (not f.evidence, f.order))
    fired = (s.explosion_step, s.collapse_step, s.nonfinite_step, s.entropy_collapse_step, s.kl_spike_step)
    measured = _measured(ON_POLICY) if failing or any(x is not None for x in fired) else {}
    fixes = _rank_by_evidence(fixes, measured)
    return {
        "verdict": "healthy" if all(x is None for x in fired) else "unstable",
        "evidence_source": measured.get("", {}).get("source") if measured else None,
        "run": str(run), "status": summary.status if summary is not None else None, "final_return": s.final_return,
        "explosion_step": s.explosion_step, "collapse_step": s.collapse_step, "nonfinite_step": s.nonfinite_step,
        "entropy_collapse_step": s.entropy_collapse_step, "kl_spike_step": s.kl_spike_step,
        "detector_messages": s.detector_messages,
        "layers_grew_first": [{"layer": layer, "env_step": step, "growth": -neg} for step, neg, layer in ev.grew[:6]],
        "saturation": ev.saturation, "repeat_rate": ev.repeat, "sensitivity": ev.sensitivity,
        "max_preactivation": ev.max_preactivation, "reward_magnitude": ev.reward_magnitude,
        "large_reward": _large_reward(cfg, ev),
        "on_policy": {"max approx KL": sig["kl_max"][0] if sig["kl_max"] else None,
                      "max clip fraction": sig["clip_fraction_max"][0] if sig["clip_fraction_max"] else None,
                      "max log-std": sig["log_std_max"][0] if sig["log_std_max"] else None,
                      "final entropy (worst agent)": sig["entropy_final"],
                      "final explained variance (worst agent)": sig["explained_variance_final"]},
        "fixes": [{"name": f.name, "id": f.id, "set": f.overrides, "why": f.why, "measured": measured.get(f.name)} for f in fixes],
    }
