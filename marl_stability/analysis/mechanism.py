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

import math
import statistics
from dataclasses import dataclass
from typing import Any, Optional

from marl_stability.core.summary import RunSummary
from marl_stability.runs.labels import detector_thresholds, label_run
from marl_stability.runs.signals import Scalars, learning_start, series_of

EARLY_GROWTH = 10.0  # the timeline's first mark on the way to the explosion threshold
HALF_SATURATED = 0.5
VANISHED = 0.01  # actor gradient below 1% of its early level
MECHANISMS = ("explosion-first", "saturation-first", "undetermined", "neither")


@dataclass(frozen=True)
class Event:
    step: int
    what: str


def _growth_alarm(points: list[tuple[int, float]], baseline: int, theta: float, min_norm: float,
                  below: bool = False) -> Optional[int]:
    """The online explosion rule on one logged series: the first step whose finite value exceeds ``theta`` x its
    early level (:func:`early_level`: the median of the first ``baseline`` finite values) and ``min_norm``, counted
    from the value after them; ``below``: the first value under ``theta`` x that level instead. Non-finite values
    are skipped, as online."""
    early, later = early_level(points, baseline)
    if early is None:
        return None
    for st, v in later:
        if (v < theta * early) if below else (v > theta * early and v > min_norm):
            return st
    return None


def early_level(points: list[tuple[int, float]], baseline: int) -> tuple[Optional[float], list[tuple[int, float]]]:
    """(median of the first ``baseline`` finite values, the finite values after them); (None, []) with fewer than
    two finite values or a level that is not positive.

    A series with no more than ``baseline`` finite values -- a run whose norms went non-finite within its first
    ``baseline`` logged updates, before the online rule has an early level -- takes the median of its first
    half instead: the level at the start of learning, read after the fact (the online detector cannot alarm in
    such a run; the mechanism can still say which signal moved first)."""
    finite = finite_points(points)
    if len(finite) < 2:
        return None, []
    k = len(finite) // 2 if _short(finite, baseline) else baseline
    early = statistics.median(v for _, v in finite[:k])
    return (early, finite[k:]) if early > 0 else (None, [])


def finite_points(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(st, v) for st, v in series_points(points) if math.isfinite(v)]


def _short(finite: list[tuple[int, float]], baseline: int) -> bool:
    """Too few finite values for the online rule's early level: :func:`early_level` falls back to the first half."""
    return len(finite) <= baseline


def series_points(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    steps, values = series_of(points)
    return list(zip(steps.tolist(), values.tolist()))


def _first_growth(scalars: Scalars, prefix: str, baseline: int, theta: float, min_norm: float,
                  start: Optional[int], below: bool = False) -> Optional[int]:
    """Earliest alarm of the growth rule over every ``prefix<network>`` tag (None: never, or no such tag)."""
    hits = [_growth_alarm([p for p in pts if start is None or p[0] >= start], baseline, theta, min_norm, below)
            for tag, pts in scalars.items() if tag.startswith(prefix)]
    hits = [h for h in hits if h is not None]
    return min(hits) if hits else None


def _eval_steps(scalars: Scalars, prefix: str, theta: float, start: Optional[int]) -> tuple[Optional[int], Optional[int]]:
    """(first evaluation step from the first update on where any agent's ``prefix<agent>`` tag reaches ``theta``,
    the evaluation step just before it: the last one still below, or the first update)."""
    steps = sorted({st for tag, pts in scalars.items() if tag.startswith(prefix) for st, _ in pts
                    if start is None or st >= start})
    hit = [st for tag, pts in scalars.items() if tag.startswith(prefix) for st, v in pts
           if v >= theta and (start is None or st >= start)]
    if not hit:
        return None, None
    first = min(hit)
    before = [st for st in steps if st < first]
    return first, (before[-1] if before else start)


def _rule(config: dict[str, Any], det: dict[str, Any]) -> tuple[float, int, float]:
    """(growth threshold, baseline in logged values, min norm): the run's explosion rule, with the baseline of
    ``explosion_baseline`` updates turned into logged values (``train.log_every``)."""
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    log_every = max(1, int(train.get("log_every", 10) or 10))
    baseline = max(1, round(int(det["explosion_baseline"]) / log_every))
    return float(det["explosion_growth"]), baseline, float(det["explosion_min_norm"])


def _decide(label: str, onset: Optional[int], growth: float, t_grow: Optional[int], t_sat: Optional[int],
            t_unsat: Optional[int], has_critic: bool) -> tuple[str, str]:
    if label == "healthy":
        why = "the run ends healthy (no agent collapsed at the end, no divergence)"
        if t_grow is not None:
            why += f"; the critic gradient did reach {growth:g}x its early level at env step {t_grow} (a warning without a failure)"
        return "neither", why
    if not has_critic:
        return "neither", f"the run {label} at env step {onset}, but it logged no critic gradient norms (grad_norm/critic/*)"
    if t_grow is not None and t_grow <= onset and (t_sat is None or t_grow <= t_unsat):
        return "explosion-first", (
            f"the critic gradient norm reached {growth:g}x its early level at env step {t_grow}, before "
            + (f"saturation (first saturated evaluation: env step {t_sat}; the one before, at {t_unsat}, was not)"
               if t_sat is not None else "any agent saturated") + f" and the {label} onset (env step {onset})")
    if t_grow is not None and t_sat is not None and t_unsat < t_grow <= t_sat and t_grow <= onset:
        return "undetermined", (
            f"the critic gradient reached {growth:g}x its early level at env step {t_grow}, between the last "
            f"unsaturated evaluation ({t_unsat}) and the first saturated one ({t_sat}): evaluate more often to tell")
    if t_sat is not None and t_sat <= onset:
        return "saturation-first", (
            f"an agent's actions reached the saturation threshold at env step {t_sat} while the critic gradient was "
            + (f"still below {growth:g}x its early level (it got there at env step {t_grow})" if t_grow is not None
               else f"below {growth:g}x its early level for the whole run"))
    return "neither", f"the run {label} at env step {onset} with neither the critic gradient growth nor saturation before it"


def classify(summary: RunSummary, config: dict[str, Any], scalars: Scalars,
             do_nothing: Optional[float] = None) -> dict[str, Any]:
    """The run's mechanism, label, onset and timeline (see the module docstring). The critic growth is the online
    explosion rule's (``detectors.explosion_rule: growth``) applied to the logged norms."""
    det = detector_thresholds(config)
    growth, baseline, min_norm = _rule(config, det)
    sat_threshold, repeat_threshold = float(det["saturation_threshold"]), float(det["repeat_threshold"])
    from marl_stability.runs.anchors import shared_team_return

    lab = label_run(summary, config, scalars, do_nothing, judge_drop=shared_team_return(config))
    label, onset, collapsed = lab.label, lab.onset, lab.agents
    start = learning_start(scalars)
    t_grow10 = _first_growth(scalars, "grad_norm/critic/", baseline, EARLY_GROWTH, min_norm, start)
    t_grow = _first_growth(scalars, "grad_norm/critic/", baseline, growth, min_norm, start)
    t_sat, t_unsat = _eval_steps(scalars, "eval/saturation/", sat_threshold, start)
    events = [Event(s, w) for s, w in (
        (start, "first gradient update"),
        (t_grow10, f"critic gradient norm >= {EARLY_GROWTH:g}x its early level"),
        (t_grow, f"critic gradient norm >= {growth:g}x its early level (the explosion threshold)"),
        (_eval_steps(scalars, "eval/saturation/", HALF_SATURATED, start)[0], f"an agent's saturation >= {HALF_SATURATED:g}"),
        (t_sat, f"an agent's saturation >= {sat_threshold:g} (the collapse threshold)"),
        (_eval_steps(scalars, "eval/repeat_rate/", repeat_threshold, start)[0], f"an agent's repeat rate >= {repeat_threshold:g}"),
        (_first_growth(scalars, "grad_norm/actor/", baseline, VANISHED, 0.0, start, below=True),
         f"an actor's gradient norm < {VANISHED:g}x its early level (vanished)"),
        (onset if label == "collapsed" else None, "collapse onset (stays collapsed from here to the end)"),
        (summary.nonfinite_step, "first non-finite value"),
    ) if s is not None]
    events.sort(key=lambda e: e.step)
    critic = {tag: finite_points(pts) for tag, pts in scalars.items() if tag.startswith("grad_norm/critic/")}
    mechanism, why = _decide(label, onset, growth, t_grow, t_sat, t_unsat, bool(critic))
    short = [tag for tag, finite in critic.items() if len(finite) >= 2 and _short(finite, baseline)]
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
        baseline = _rule(config, detector_thresholds(config))[1]
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
