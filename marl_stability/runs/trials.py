"""The trials of a sweep directory, read back: one row per planned trial (finished, failed or missing) from
``arms.json``, ``index.json`` and each run's ``summary.json``, with the finished runs' summaries and evaluation
curves, and the CSV of those rows. Reports, tables and the analysis tools all read sweeps through it."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from marl_stability.atomic import atomic_write_text
from marl_stability.core.summary import RunSummary
from marl_stability.core.tb_run import OUTLIER_SETTING, tensorboard_link
from marl_stability.runs.record import RunRecord
from marl_stability.errors import UserError
from marl_stability.runs.sweep_layout import FINAL_STATUSES, Arm, Plan, read_plan, run_dir_of, trial_id

COLUMNS = [
    "arm", "seed", "status", "final_return", "best_return", "collapse_step", "explosion_step", "nonfinite_step",
    "max_critic_grad_norm", "max_actor_grad_norm", "repeated_action_rate", "saturation_rate", "action_sensitivity",
    "env_steps", "updates", "wall_seconds", "error", "run_dir",
]


def _load_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Trials:
    """What the report needs from a sweep directory."""

    out: Path
    plan: Plan
    rows: list[dict[str, Any]]
    curves: dict[str, list[list[tuple[int, float]]]]  # arm -> one eval history per finished trial
    factor_columns: dict[str, str] = field(default_factory=dict)  # factor -> its CSV column
    summaries: dict[str, RunSummary] = field(default_factory=dict)  # run_dir (relative) -> summary, finished trials


def collect(out: Path) -> Trials:
    """One row per planned trial (finished, failed or missing), from the index and each run's summary.json."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out} is not a directory")
    plan = read_plan(out)
    index = _load_json(out / "index.json") or {"trials": {}}
    entries = index.get("trials", {}) if isinstance(index.get("trials"), dict) else {}
    trials = Trials(out, plan, [], {a.name: [] for a in plan.arms},
                    {f: (f if f not in COLUMNS else f"factor_{f}") for f in plan.factors})
    # Trials come from the plan (arms x seeds) plus any the index knows about (a sweep extended with more seeds).
    seeds = sorted(set(plan.seeds) | {int(e["seed"]) for e in entries.values() if isinstance(e, dict) and "seed" in e})
    for arm in plan.arms:
        for seed in seeds:
            entry = entries.get(trial_id(arm.name, seed))
            if entry is None and seed not in plan.seeds:
                continue
            trials.rows.append(_row(trials, arm, seed, entry))
    return trials


def _row(trials: Trials, arm: Arm, seed: int, entry: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The CSV row of one trial; a finished trial's summary and evaluation curve are kept in ``trials``."""
    run_dir = run_dir_of(trials.out, arm.name, seed)
    summary = RunRecord(run_dir).summary
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(arm=arm.name, seed=seed, run_dir=str(run_dir.relative_to(trials.out)))
    if summary is not None and summary.status in FINAL_STATUSES:
        row.update(_summary_columns(summary))
        trials.summaries[row["run_dir"]] = summary
        trials.curves[arm.name].append(summary.returns())
    elif entry is not None and entry.get("state") == "failed":
        row.update(status="failed", error=entry.get("error"))
    else:
        row.update(status="missing", error=(entry or {}).get("error"))
    for f, col in trials.factor_columns.items():
        row[col] = arm.levels.get(f)
    return row


def _summary_columns(s: RunSummary) -> dict[str, Any]:
    return {
        "status": s.status, "final_return": s.final_return, "best_return": s.best_return,
        "collapse_step": s.collapse_step, "explosion_step": s.explosion_step, "nonfinite_step": s.nonfinite_step,
        "max_critic_grad_norm": s.grad_peak("critic"), "max_actor_grad_norm": s.grad_peak("actor"),
        "repeated_action_rate": s.repeated_action_rate, "saturation_rate": s.saturation_rate,
        "action_sensitivity": s.action_sensitivity, "env_steps": s.env_steps, "updates": s.updates,
        "wall_seconds": s.wall_seconds,
    }


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # full precision: a rebuilt CSV is identical
    return str(v)


def write_csv(trials: Trials, path: Path) -> None:
    columns = COLUMNS + list(trials.factor_columns.values())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in trials.rows:
        w.writerow([_csv_value(r.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


def first_agent(runs_dir: Path) -> str:
    """The first agent's name in a sweep's runs (``<arm>/seed_<n>/summary.json``), ``agent_0`` when none."""
    for path in sorted(Path(runs_dir).glob("*/*/summary.json")):
        s = RunRecord(path.parent).summary
        if s is not None and s.agents:
            return s.agents[0]
    return "agent_0"


def tensorboard_command(runs_dir: Path, port: int = 6006) -> str:
    """A TensorBoard command that works without activating the virtual environment: this interpreter runs it."""
    import shlex
    import sys

    return f"{shlex.quote(sys.executable)} -m tensorboard.main --logdir {shlex.quote(str(runs_dir))} --port {port}"


def tensorboard_hint(runs_dir: Path, port: int = 6006) -> str:
    """A sweep's console output about TensorBoard: the deep link first (the thing to open), then the command."""
    return (f"open {tensorboard_link(first_agent(runs_dir), port)}\n"
            f"  (one colour per arm, the story cards pinned) once TensorBoard runs:\n"
            f"  {tensorboard_command(runs_dir, port)}\n"
            f"  To see the best returns too, {OUTLIER_SETTING}.")


def fix_engagement_section(trials: Trials) -> list[str]:
    """Markdown: per arm and fix in effect, in how many finished runs the fix acted (measured: clip fraction,
    reward scale, normalizer statistics, Huber range -- ``marl_stability.hooks.engagement``), with the first run's
    evidence; fixes that act by construction say so. Empty when no run recorded it (runs before 0.3.0)."""
    by_arm: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in trials.rows:
        s = trials.summaries.get(row["run_dir"])
        for fix, e in (s.fix_engagement if s is not None else {}).items():
            by_arm.setdefault(row["arm"], {}).setdefault(fix, []).append(e)
    if not by_arm:
        return []
    lines = ["", "## Which fixes acted", "",
             "Per arm, each fix the runs use and in how many runs it changed anything, measured where a fix can idle "
             "(gradient clipping: steps clipped; reward scaling: the learner's scale; observation normalization: the "
             "running statistics; Huber loss: TD errors beyond its delta). A fix that never acted did none of the "
             "arm's work.", "", "| arm | fix | acted | evidence (first run) |", "|---|---|---|---|"]
    for arm, fixes in by_arm.items():
        for fix, records in fixes.items():
            measured = [r for r in records if r.get("engaged") is not None]
            acted = (f"{sum(bool(r['engaged']) for r in measured)}/{len(measured)} runs" if measured
                     else "by construction")
            lines.append(f"| `{arm}` | `{fix}` | {acted} | {records[0].get('how', '')} |")
    return lines
