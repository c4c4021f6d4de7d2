"""Which road a run took to the repeated-action failure, read from its TensorBoard scalars and summary.json.

Two mechanisms end in the same place (every agent repeating one action, or non-finite values):

- **explosion-first** (the seed practitioner's chain): the critic's gradient norm grows to ``explosion_growth``
  times its early level (the calibrated explosion rule, ``detectors.explosion_growth``, median of the first
  ``detectors.explosion_baseline`` logged norms) before any agent's evaluation reaches the collapse detector's
  saturation threshold; the outputs saturate (or the run diverges) afterwards;
- **saturation-first**: an agent's actions reach the saturation threshold while the critic's gradient is still
  below that growth (under Adam the step does not grow with the gradient, so the actor can be pushed into
  saturation with small gradients);
- **neither**: a healthy run (no collapse at the end, no divergence), or a failing run where neither signal
  moved before the failure (the timeline then shows what did).

The failure label and onset are ``marl-stability calibrate``'s (from the evaluations, never from the detectors).
The timeline lists when each signal moved: the first gradient update, critic gradient x10 and x``growth`` its
early level, the first evaluation with saturation >= 0.5 and >= the threshold, repeat rate >= its threshold,
the actor gradient falling below 1% of its early level (vanished), the collapse onset, the first non-finite
value. Steps are env steps; the gradient tags are logged every ``train.log_every`` updates and evaluations
every ``train.eval_every`` env steps, so "first" is up to that resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from marl_stability.calibrate_runs import detector_thresholds, label_run
from marl_stability.calibrate_signals import Scalars, SignalParams, compute, learning_start, signal, trace_of
from marl_stability.summary import RunSummary

EARLY_GROWTH = 10.0  # the timeline's first mark on the way to the explosion threshold
HALF_SATURATED = 0.5
VANISHED = 0.01  # actor gradient below 1% of its early level


@dataclass(frozen=True)
class Event:
    step: int
    what: str


def _first_at(scalars: Scalars, name: str, theta: float, params: SignalParams, start: Optional[int]) -> Optional[int]:
    """First logged step (from the first update on) where a registry signal reaches ``theta``."""
    series = compute(signal(name), scalars, params)
    if series is None:
        return None
    if start is not None:
        keep = series[0] >= start
        series = series[0][keep], series[1][keep]
    return trace_of(series, signal(name).direction).alarm_step(theta)


def _eval_first(scalars: Scalars, prefix: str, theta: float, start: Optional[int]) -> Optional[int]:
    """First evaluation step (from the first update on) where any agent's ``prefix<agent>`` tag reaches ``theta``."""
    steps = [st for tag, pts in scalars.items() if tag.startswith(prefix) for st, v in pts
             if v >= theta and (start is None or st >= start)]
    return min(steps) if steps else None


def _vanished(scalars: Scalars, params: SignalParams, start: Optional[int]) -> Optional[int]:
    """First logged step where an actor's gradient norm is below VANISHED x its early level."""
    import numpy as np

    from marl_stability.calibrate_signals import _ratio_to_early, series_of

    firsts = []
    for tag, pts in scalars.items():
        if not tag.startswith("grad_norm/actor/") or not pts:
            continue
        steps, ratio = _ratio_to_early(series_of(pts), params.baseline_updates)
        hit = np.flatnonzero((ratio < VANISHED) & (steps >= (start or 0)))
        if len(hit):
            firsts.append(int(steps[hit[0]]))
    return min(firsts) if firsts else None


def classify(summary: RunSummary, config: dict[str, Any], scalars: Scalars) -> dict[str, Any]:
    """The run's mechanism, label, onset and timeline (see the module docstring)."""
    det = detector_thresholds(config)
    growth = float(det.get("explosion_growth", 100.0))
    params = SignalParams(baseline_updates=int(det.get("explosion_baseline", 20)))
    label, onset, _, collapsed = label_run(summary, config, scalars)
    start = learning_start(scalars)
    t_grow10 = _first_at(scalars, "critic_grad_growth", EARLY_GROWTH, params, start)
    t_grow = _first_at(scalars, "critic_grad_growth", growth, params, start)
    t_sat = _eval_first(scalars, "eval/saturation/", float(det["saturation_threshold"]), start)
    events = [Event(s, w) for s, w in (
        (start, "first gradient update"),
        (t_grow10, f"critic gradient norm >= {EARLY_GROWTH:g}x its early level"),
        (t_grow, f"critic gradient norm >= {growth:g}x its early level (the explosion threshold)"),
        (_eval_first(scalars, "eval/saturation/", HALF_SATURATED, start), f"an agent's saturation >= {HALF_SATURATED:g}"),
        (t_sat, f"an agent's saturation >= {float(det['saturation_threshold']):g} (the collapse threshold)"),
        (_eval_first(scalars, "eval/repeat_rate/", float(det["repeat_threshold"]), start),
         f"an agent's repeat rate >= {float(det['repeat_threshold']):g}"),
        (_vanished(scalars, params, start), f"an actor's gradient norm < {VANISHED:g}x its early level (vanished)"),
        (onset if label == "collapsed" else None, "collapse onset (stays collapsed from here to the end)"),
        (summary.nonfinite_step, "first non-finite value"),
    ) if s is not None]
    events.sort(key=lambda e: e.step)
    if label == "healthy":
        mechanism = "neither"
        why = "the run ends healthy (no agent collapsed at the end, no divergence)"
        if t_grow is not None:
            why += f"; the critic gradient did reach {growth:g}x its early level at env step {t_grow} (a warning without a failure)"
    elif t_grow is not None and t_grow <= onset and (t_sat is None or t_grow <= t_sat):
        mechanism = "explosion-first"
        why = (f"the critic gradient norm reached {growth:g}x its early level at env step {t_grow}, before "
               + (f"saturation (env step {t_sat})" if t_sat is not None else "any agent saturated")
               + f" and the {label} onset (env step {onset})")
    elif t_sat is not None and t_sat <= onset:
        mechanism = "saturation-first"
        why = (f"an agent's actions reached the saturation threshold at env step {t_sat} while the critic gradient was "
               + (f"still below {growth:g}x its early level (it got there at env step {t_grow})" if t_grow is not None
                  else f"below {growth:g}x its early level for the whole run"))
    else:
        mechanism = "neither"
        why = f"the run {label} at env step {onset} with neither the critic gradient growth nor saturation before it"
    return {"mechanism": mechanism, "why": why, "label": label, "onset": onset, "collapsed_agents": collapsed,
            "explosion_growth": growth, "timeline": [{"env_step": e.step, "event": e.what} for e in events]}


# ---------------------------------------------------------------------------------------------- over many runs
def _step_of(d: dict[str, Any], prefix: str) -> Optional[int]:
    return next((e["env_step"] for e in d["timeline"] if e["event"].startswith(prefix)), None)


def _peak_growth(scalars: Scalars, params: SignalParams, until: Optional[int]) -> Optional[float]:
    """The largest critic gradient growth logged up to ``until`` (inclusive; None: the whole run)."""
    series = compute(signal("critic_grad_growth"), scalars, params)
    if series is None or not len(series[0]):
        return None
    keep = series[0] <= until if until is not None else slice(None)
    vals = series[1][keep]
    return float(vals.max()) if len(vals) else None


def table(dirs: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per finished run below ``dirs`` (group, seed, label, mechanism, the steps that decide it, the peak
    critic growth before the failure onset) and the notes on skipped runs."""
    from pathlib import Path

    from marl_stability.calibrate_runs import find_run_dirs, group_name, read_config, skip_reason
    from marl_stability.doctor import read_scalars
    from marl_stability.summary import read_summary

    rows, notes = [], []
    for run in find_run_dirs([Path(d) for d in dirs]):
        summary = read_summary(run / "summary.json") if (run / "summary.json").is_file() else None
        config = read_config(run)
        why = skip_reason(run, summary) or (None if config is not None else "unreadable config.yaml")
        if why is not None:
            notes.append(f"skipped {run}: {why}")
            continue
        scalars = read_scalars(run)
        d = classify(summary, config, scalars)
        params = SignalParams(baseline_updates=int(detector_thresholds(config).get("explosion_baseline", 20)))
        rows.append({"group": group_name(run)[0], "seed": summary.seed, "label": d["label"], "mechanism": d["mechanism"],
                     "onset": d["onset"], "growth_step": _step_of(d, f"critic gradient norm >= {d['explosion_growth']:g}x"),
                     "saturation_step": _step_of(d, "an agent's saturation >= " + f"{float(detector_thresholds(config)['saturation_threshold']):g}"),
                     "peak_growth_before_onset": _peak_growth(scalars, params, d["onset"]),
                     "explosion_growth": d["explosion_growth"], "run": str(run)})
    return rows, notes


def render_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per group the counts of each mechanism, then one line per run."""
    def f(v: Any) -> str:
        return "—" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["group"], r["seed"])):
        groups.setdefault(r["group"], []).append(r)
    lines = ["| group | runs | healthy | collapsed | diverged | explosion-first | saturation-first | neither |",
             "|---|---|---|---|---|---|---|---|"]
    for g, rs in groups.items():
        count = lambda key, v: sum(r[key] == v for r in rs)  # noqa: E731
        lines.append(f"| {g} | {len(rs)} | {count('label', 'healthy')} | {count('label', 'collapsed')} | "
                     f"{count('label', 'diverged')} | {count('mechanism', 'explosion-first')} | "
                     f"{count('mechanism', 'saturation-first')} | {count('mechanism', 'neither')} |")
    lines += ["", "| group | seed | label | mechanism | critic growth threshold reached | first saturated evaluation | "
              "failure onset | peak critic growth up to the onset |", "|---|---|---|---|---|---|---|---|"]
    for g, rs in groups.items():
        lines += [f"| {g} | {r['seed']} | {r['label']} | {r['mechanism']} | {f(r['growth_step'])} | "
                  f"{f(r['saturation_step'])} | {f(r['onset'])} | {f(r['peak_growth_before_onset'])} |" for r in rs]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    import argparse
    import sys
    from pathlib import Path

    from marl_stability.atomic import atomic_write_text
    from marl_stability.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m marl_stability.mechanism",
                                     description="Which road each run took: explosion-first, saturation-first or neither.")
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run directories or folders holding runs")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    try:
        rows, notes = table(args.dirs)
        if not rows:
            raise UserError("no finished run (completed or diverged) below " + ", ".join(map(str, args.dirs)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    text = render_table(rows)
    print(text)
    for n in notes:
        print(n, file=sys.stderr)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
