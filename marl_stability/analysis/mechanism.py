"""Which road a run took to the repeated-action failure, read from its TensorBoard scalars and summary.json.

Two mechanisms end in the same place (every agent repeating one action, or non-finite values):

- **explosion-first** (the seed practitioner's chain): the critic's gradient norm grows to ``explosion_growth``
  times its early level (the calibrated explosion rule, ``detectors.explosion_growth``, median of the first
  ``detectors.explosion_baseline`` logged norms, or of the first half of a series that went non-finite sooner:
  :func:`early_level`) before any agent's evaluation reaches the collapse detector's
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

from marl_stability.core.roads import (  # noqa: F401 -- early_level, finite_points: this module's API since 0.2
    Scalars,
    early_level,
    eval_steps,
    explosion_rule,
    finite_points,
    first_growth,
    road,
    series_points,
    short_series,
)
from marl_stability.core.summary import RunSummary
from marl_stability.runs.labels import detector_thresholds, label_run

EARLY_GROWTH = 10.0  # the timeline's first mark on the way to the explosion threshold
HALF_SATURATED = 0.5
VANISHED = 0.01  # actor gradient below 1% of its early level
MECHANISMS = ("explosion-first", "saturation-first", "undetermined", "neither")


@dataclass(frozen=True)
class Event:
    step: int
    what: str


def classify(summary: RunSummary, config: dict[str, Any], scalars: Scalars,
             do_nothing: Optional[float] = None) -> dict[str, Any]:
    """The run's mechanism, label, onset and timeline (see the module docstring). The critic growth is the online
    explosion rule's (``detectors.explosion_rule: growth``) applied to the logged norms."""
    det = detector_thresholds(config)
    sat_threshold, repeat_threshold = float(det["saturation_threshold"]), float(det["repeat_threshold"])
    from marl_stability.runs.anchors import shared_team_return

    lab = label_run(summary, config, scalars, do_nothing, judge_drop=shared_team_return(config))
    label, onset, collapsed = lab.label, lab.onset, lab.agents
    r = road(scalars, config, det, label, onset)
    mechanism, why, growth, baseline, start = r["mechanism"], r["why"], r["explosion_growth"], r["baseline"], r["start"]
    t_grow, t_sat = r["growth_step"], r["saturation_step"]
    min_norm = explosion_rule(config, det)[2]
    t_grow10 = first_growth(scalars, "grad_norm/critic/", baseline, EARLY_GROWTH, min_norm, start)
    events = [Event(s, w) for s, w in (
        (start, "first gradient update"),
        (t_grow10, f"critic gradient norm >= {EARLY_GROWTH:g}x its early level"),
        (t_grow, f"critic gradient norm >= {growth:g}x its early level (the explosion threshold)"),
        (eval_steps(scalars, "eval/saturation/", HALF_SATURATED, start)[0], f"an agent's saturation >= {HALF_SATURATED:g}"),
        (t_sat, f"an agent's saturation >= {sat_threshold:g} (the collapse threshold)"),
        (eval_steps(scalars, "eval/repeat_rate/", repeat_threshold, start)[0], f"an agent's repeat rate >= {repeat_threshold:g}"),
        (first_growth(scalars, "grad_norm/actor/", baseline, VANISHED, 0.0, start, below=True),
         f"an actor's gradient norm < {VANISHED:g}x its early level (vanished)"),
        (onset if label == "collapsed" else None, "collapse onset (stays collapsed from here to the end)"),
        (summary.nonfinite_step, "first non-finite value"),
    ) if s is not None]
    events.sort(key=lambda e: e.step)
    critic = {tag: finite_points(pts) for tag, pts in scalars.items() if tag.startswith("grad_norm/critic/")}
    short = [tag for tag, finite in critic.items() if len(finite) >= 2 and short_series(finite, baseline)]
    if t_grow is not None and short:
        why += (f" [{', '.join(sorted(short))}: finite for no more than the {baseline} logged updates of the early "
                "level; their early level is the median of the first half]")
    return {"mechanism": mechanism, "why": why, "label": label, "onset": onset, "collapsed_agents": collapsed,
            "explosion_growth": growth, "growth_step": t_grow, "saturation_step": t_sat,
            "timeline": [{"env_step": e.step, "event": e.what} for e in events]}


# ---------------------------------------------------------------------------------------------- over many runs
def _peak_growth(scalars: Scalars, baseline: int, until: Optional[int]) -> Optional[float]:
    """The largest finite critic gradient norm logged up to ``until`` (inclusive) over its network's early level
    (max over networks; None without a baseline)."""
    peaks = []
    for tag, pts in scalars.items():
        if not tag.startswith("grad_norm/critic/"):
            continue
        early, after = early_level(pts, baseline)
        later = [v for st, v in after if until is None or st <= until]
        if early is not None and later:
            peaks.append(max(later) / early)
    return max(peaks) if peaks else None


def checked_detectors(config: dict[str, Any]) -> dict[str, Any]:
    """``detector_thresholds`` validated by ``DetectorConfig`` (UserError naming the bad key)."""
    from pydantic import ValidationError

    from marl_stability.config import DetectorConfig
    from marl_stability.errors import UserError

    merged = detector_thresholds(config)
    try:
        return DetectorConfig.model_validate(merged).model_dump()
    except ValidationError as e:
        first = e.errors()[0]
        raise UserError(f"detectors.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def table(dirs: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per finished run below ``dirs`` (group, seed, label, mechanism, the steps that decide it, the peak
    critic growth before the failure onset) and the notes on skipped runs."""
    from marl_stability.errors import UserError
    from marl_stability.runs.labelled import group_name
    from marl_stability.runs.record import find_runs

    rows, notes = [], []
    for run in find_runs(dirs):
        why = run.skip_reason()
        if why is None:
            try:
                checked_detectors(run.config or {})
            except UserError as e:
                why = f"invalid config.yaml: {e}"
        if why is not None:
            notes.append(f"skipped {run.dir}: {why}")
            continue
        summary, config, scalars = run.summary, run.config or {}, run.scalars
        assert summary is not None
        d = classify(summary, config, scalars, run.do_nothing)
        baseline = explosion_rule(config, detector_thresholds(config))[1]
        name, sweep = group_name(run.dir)
        rows.append({"group": f"{sweep}/{name}" if sweep else name, "seed": summary.seed, "label": d["label"], "mechanism": d["mechanism"],
                     "onset": d["onset"], "growth_step": d["growth_step"], "saturation_step": d["saturation_step"],
                     "peak_growth_before_onset": _peak_growth(scalars, baseline, d["onset"]),
                     "explosion_growth": d["explosion_growth"], "run": str(run.dir)})
    return rows, notes


def render_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per group the counts of each mechanism, then one line per run."""
    def f(v: Any) -> str:
        return "—" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["group"], r["seed"])):
        groups.setdefault(r["group"], []).append(r)
    lines = ["| group | runs | healthy | collapsed | diverged | degraded | explosion-first | saturation-first | "
             "undetermined | neither |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g, rs in groups.items():
        count = lambda key, v: sum(r[key] == v for r in rs)  # noqa: E731
        lines.append(f"| {g} | {len(rs)} | {count('label', 'healthy')} | {count('label', 'collapsed')} | "
                     f"{count('label', 'diverged')} | {count('label', 'degraded')} | {count('mechanism', 'explosion-first')} | "
                     f"{count('mechanism', 'saturation-first')} | {count('mechanism', 'undetermined')} | "
                     f"{count('mechanism', 'neither')} |")
    lines += ["", "| group | seed | label | mechanism | critic growth threshold reached | first saturated evaluation | "
              "failure onset | peak critic growth up to the onset |", "|---|---|---|---|---|---|---|---|"]
    for g, rs in groups.items():
        lines += [f"| {g} | {r['seed']} | {r['label']} | {r['mechanism']} | {f(r['growth_step'])} | "
                  f"{f(r['saturation_step'])} | {f(r['onset'])} | {f(r['peak_growth_before_onset'])} |" for r in rs]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    import sys
    from pathlib import Path

    from marl_stability.atomic import atomic_write_text
    from marl_stability.errors import ArgumentParser, UserError

    parser = ArgumentParser(prog="python -m marl_stability.analysis.mechanism",
                            description="Which road each run took: explosion-first, saturation-first or neither.")
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run directories or folders holding runs")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    try:
        if args.out is not None and args.out.is_dir():
            raise UserError(f"--out {args.out} is a directory")
        rows, notes = table(args.dirs)
        for n in notes:
            print(n, file=sys.stderr)
        if not rows:
            raise UserError("no finished run (completed or diverged) below " + ", ".join(map(str, args.dirs)))
        text = render_table(rows)
        if args.out is not None:
            atomic_write_text(args.out, text + "\n")
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(text)


if __name__ == "__main__":
    main()
