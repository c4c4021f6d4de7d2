"""The repeated-action verdicts across tasks: failure vs fixed and each single fix, one table per task and one
table across tasks.

    python -m marl_stability.analysis.cross_task SWEEP_DIR... [--out DIR] [--quiet]
    python -m marl_stability.analysis.cross_task --from-records DIR/records.json [--out DIR]

Each SWEEP_DIR is a reproduction sweep (``marl-stability reproduce --config experiments/reproduce_<task>.yaml``)
or a single-fix sweep (``marl-stability ablate -c experiments/reproduce_single_fixes_<task>.yaml``); runs are
grouped by task (the env id) and by sweep kind, so the same arm name in a reproduction and a single-fix sweep of
one task (``failure``) stays two rows. ``--out`` gets ``records.json`` (one record per finished run: everything
the tables use, so ``--from-records`` rebuilds them without the run directories) and ``report.md``.

Definitions (all from each run's final evaluation and its summary.json, never from returns alone):
- an agent is **collapsed at the end** when its final evaluation meets the collapse detector's repeat and
  sensitivity thresholds (the run's ``detectors:`` section: repeat rate >= 0.9, sensitivity <= 1e-3) AND maps
  different states to the same action (``batch_same_action`` >= 0.9), saturated or not (``runs.labels.is_collapsed``;
  the label's kind says which: *saturated* when every collapsed agent's saturation >= 0.9). The last condition is what separates a
  collapse from a saturated code: simple_speaker_listener's speaker sees a constant one-hot goal, so its repeat
  rate is 1 by construction, and a speaker that answers each goal with its own saturated message has zero
  local sensitivity too, while it communicates perfectly (its same-action rate is then ~1/3, one goal in three);
- a run **ends collapsed** when at least one agent is collapsed at the end;
- a fix **cures** the failure on a task when no seed ends collapsed, **does not cure** when every seed does,
  and cures **partly** otherwise; the collapse detector's firing during training is reported beside it; every
  rate carries its 95% Wilson interval;
- each run's **label** (healthy, collapsed, diverged, degraded: ``marl_stability.runs.labels``, the labels
  ``calibrate`` and ``doctor`` use) is counted beside it: a run that ends no better than its task's do-nothing
  policy is *degraded*, never healthy, whether or not an agent collapsed (no do-nothing anchor on a competitive
  task: its team return mixes both teams);
- on competitive tasks the team return (the sum over all agents, what every other report shows) mixes both
  teams, so the tables add each team's return: the adversaries (agents named ``adversary*``, ``leadadversary*``,
  ``eve*``) and the good agents (everyone else), each the sum of its members' returns.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from marl_stability.runs.anchors import COMPETITIVE_TASKS
from marl_stability.atomic import atomic_write_json, atomic_write_text
from marl_stability.core.rates import rate_text
from marl_stability.errors import ArgumentParser, UserError
from marl_stability.fmt import fmt_number
from marl_stability.runs.labels import LABELS
from marl_stability.runs.record import RunRecord
from marl_stability.runs.sweep_layout import FINAL_STATUSES
from marl_stability.runs.trials import collect

ADVERSARY_PREFIXES = ("adversary", "leadadversary", "eve")
# Readable names of the arms the project's sweep files use (others print as their arm name).
ARM_LABELS = {
    "failure": "none (failure preset)",
    "fixed": "all fixes (fixed preset)",
    "clip": "global-norm gradient clipping 1.0",
    "obs_norm": "running observation normalization",
    "tanh_scaled": "tanh scaled to the action bounds",
    "small_init": "last actor layer U(±3e-3)",
    "lower_lr": "Adam lr 1e-3 (actor and critic)",
    "reward_scale": "learner reward ×0.1 (undoes the ×10)",
}
ARM_ORDER = tuple(ARM_LABELS)


@dataclass
class TaskRun:
    """What the cross-task tables use from one finished run."""

    task: str
    sweep: str  # "reproduction" or "single_fixes"
    arm: str
    seed: int
    status: str
    final_return: Optional[float]
    collapse_step: Optional[int]
    explosion_step: Optional[int]
    peak_critic_grad: Optional[float]
    collapsed_agents: list[str]  # agents collapsed at the final evaluation (detector thresholds)
    agents: list[str]
    agent_returns: dict[str, float] = field(default_factory=dict)  # final evaluation, per agent
    action_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    label: str = ""  # healthy | collapsed | diverged | degraded ("" in records written before labels existed)
    label_kind: str = ""  # collapsed: saturated | unsaturated; degraded: below_do_nothing | dropped


def team_of(agent: str) -> str:
    return "adversaries" if agent.startswith(ADVERSARY_PREFIXES) else "good agents"


def sweep_kind(arm_names: list[str]) -> str:
    return "reproduction" if set(arm_names) == {"failure", "fixed"} else "single_fixes"


def load_records(out: Path) -> list[TaskRun]:
    """One record per finished run of a sweep directory (UserError if it is not one)."""
    trials = collect(Path(out))
    kind = sweep_kind([a.name for a in trials.plan.arms])
    records = []
    for row in trials.rows:
        if row["status"] not in FINAL_STATUSES:
            continue
        s = trials.summaries[row["run_dir"]]
        cfg = trials.plan.arm(row["arm"]).config
        stats = {a: st.model_dump() for a, st in s.action_stats.items()}
        record = RunRecord(Path(out) / row["run_dir"])
        label = record.label
        records.append(TaskRun(
            task=cfg["env"]["id"], sweep=kind, arm=row["arm"], seed=int(row["seed"]), status=s.status,
            final_return=s.final_return, collapse_step=s.collapse_step, explosion_step=s.explosion_step,
            peak_critic_grad=s.grad_peak("critic"),
            collapsed_agents=label.agents,  # the label applies the collapse rule to the final evaluation
            agents=list(s.agents), agent_returns=record.last_values("eval/agent_return/"), action_stats=stats,
            label=label.label, label_kind=label.kind))
    return records


# ---------------------------------------------------------------------------------------------- aggregation
@dataclass
class ArmVerdict:
    task: str
    sweep: str
    arm: str
    runs: list[TaskRun]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def detected(self) -> int:
        return sum(r.collapse_step is not None for r in self.runs)

    @property
    def ended_collapsed(self) -> int:
        return sum(bool(r.collapsed_agents) for r in self.runs)

    @property
    def verdict(self) -> str:
        k = self.ended_collapsed
        return "cures" if k == 0 else "does not cure" if k == self.n else "partly"

    def labels(self) -> str:
        """How many seeds carry each label, e.g. ``healthy 8, degraded 2 (below_do_nothing 2)``."""
        if any(not r.label for r in self.runs):
            return "n/a"
        parts = []
        for name in LABELS:
            runs = [r for r in self.runs if r.label == name]
            if runs:
                kinds = {k: sum(r.label_kind == k for r in runs) for k in sorted({r.label_kind for r in runs}) if k}
                note = " (" + ", ".join(f"{k} {c}" for k, c in kinds.items()) + ")" if kinds else ""
                parts.append(f"{name} {len(runs)}{note}")
        return ", ".join(parts)

    def agent_counts(self) -> dict[str, int]:
        """How many seeds ended with each agent collapsed (agents in the env's order)."""
        agents = self.runs[0].agents if self.runs else []
        return {a: sum(a in r.collapsed_agents for r in self.runs) for a in agents}

    def team_returns(self) -> dict[str, list[float]]:
        """Per team, the final return of each seed (sum over the team's agents)."""
        out: dict[str, list[float]] = {}
        for r in self.runs:
            totals: dict[str, float] = {}
            for agent, ret in r.agent_returns.items():
                totals[team_of(agent)] = totals.get(team_of(agent), 0.0) + ret
            for team, v in totals.items():
                out.setdefault(team, []).append(v)
        return out


def group(records: list[TaskRun]) -> dict[str, list[ArmVerdict]]:
    """task -> its arms (reproduction first, then single fixes; each in ARM_ORDER, unknown arms last)."""
    keyed: dict[tuple[str, str, str], list[TaskRun]] = {}
    for r in sorted(records, key=lambda r: r.seed):
        keyed.setdefault((r.task, r.sweep, r.arm), []).append(r)
    order = {a: i for i, a in enumerate(ARM_ORDER)}
    out: dict[str, list[ArmVerdict]] = {}
    for (task, sweep, arm) in sorted(keyed, key=lambda k: (k[0], k[1] != "reproduction", order.get(k[2], 99), k[2])):
        out.setdefault(task, []).append(ArmVerdict(task, sweep, arm, keyed[(task, sweep, arm)]))
    return out


# ---------------------------------------------------------------------------------------------- markdown
def _onset(v: ArmVerdict) -> str:
    steps = [r.collapse_step for r in v.runs if r.collapse_step is not None]
    return f" at {int(np.median(steps)) // 1000}k" if steps else ""


def _agents_note(v: ArmVerdict) -> str:
    counts = {a: k for a, k in v.agent_counts().items() if k}
    if not counts or len(v.runs[0].agents) <= 1:
        return ""
    if all(k == v.ended_collapsed for k in counts.values()) and len(counts) == len(v.runs[0].agents):
        return " (all agents)"
    return " (" + ", ".join(f"{a} {k}" for a, k in counts.items()) + ")"


def _returns(v: ArmVerdict) -> str:
    xs = [r.final_return for r in v.runs if r.final_return is not None]
    text = f"{fmt_number(float(np.mean(xs)), '.1f')} ({', '.join(f'{x:.1f}' for x in xs)})" if xs else "n/a"
    if v.task in COMPETITIVE_TASKS:
        teams = v.team_returns()
        text += "; " + "; ".join(f"{t} {np.mean(x):.1f}" for t, x in sorted(teams.items()))
    return text


def _grad(v: ArmVerdict) -> str:
    g = [r.peak_critic_grad for r in v.runs if r.peak_critic_grad is not None]
    return f"{min(g):.3g} – {max(g):.3g}" if g else "n/a"


def task_table(arms: list[ArmVerdict]) -> list[str]:
    lines = ["| sweep | arm | seeds | collapse detected | ended collapsed | verdict | labels | final team return: mean "
             "(per seed) | peak critic grad norm |", "|---|---|---|---|---|---|---|---|---|"]
    for v in arms:
        lines.append(f"| {v.sweep} | {ARM_LABELS.get(v.arm, v.arm)} | {v.n} | {v.detected}/{v.n}{_onset(v)} | "
                     f"{rate_text(v.ended_collapsed, v.n)}{_agents_note(v)} | {v.verdict if v.arm != 'failure' else '—'} | "
                     f"{v.labels()} | {_returns(v)} | {_grad(v)} |")
    return lines


def matrix(groups: dict[str, list[ArmVerdict]]) -> list[str]:
    """Fix x task: the verdict with its counts (ended collapsed / detected, out of n seeds)."""
    tasks = list(groups)
    arms = [a for a in ARM_ORDER if any(v.arm == a for vs in groups.values() for v in vs)]
    arms += sorted({v.arm for vs in groups.values() for v in vs} - set(arms))
    lines = ["| fix (alone, on the failure preset) | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for arm in arms:
        cells = []
        for t in tasks:
            vs = [v for v in groups[t] if v.arm == arm]
            v = next((x for x in vs if x.sweep == "single_fixes"), vs[0] if vs else None)
            if v is None:
                cells.append("—")
                continue
            word = "fails" if arm == "failure" else v.verdict
            cells.append(f"{word} ({rate_text(v.ended_collapsed, v.n)} end, {v.detected}/{v.n} detected)")
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(cells) + " |")
    return lines


def render(records: list[TaskRun]) -> str:
    groups = group(records)
    lines = ["# The repeated-action failure across tasks", "",
             "Generated by `python -m marl_stability.analysis.cross_task` (definitions in its docstring). \"end\": seeds "
             "whose final evaluation has at least one agent collapsed (repeat >= 0.9, sensitivity <= 1e-3 and the same "
             "action for >= 90% of pairs of different states; saturated or not: the label's kind says which), with its "
             "95% Wilson interval; "
             "\"detected\": seeds where the collapse detector fired during training; \"labels\": each run's label "
             "(`marl_stability.runs.labels`; degraded = no better than the task's do-nothing policy, or a sustained drop). "
             "The failure row and the single fixes come from each task's single-fix sweep when it has one.", "",
             "## Across tasks", ""]
    lines += matrix(groups)
    for task, arms in groups.items():
        lines += ["", f"## {task}", ""] + task_table(arms)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- entry point
def read_records(path: Path) -> list[TaskRun]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [TaskRun(**r) for r in data["records"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a cross-task records file ({e})") from None


def main(argv: Optional[list[str]] = None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="*", type=Path, help="reproduction and single-fix sweep directories")
    ap.add_argument("--from-records", type=Path, default=None, help="rebuild from a records.json instead")
    ap.add_argument("--out", type=Path, default=None, help="write records.json and report.md here")
    ap.add_argument("--quiet", action="store_true", help="do not print the report")
    args = ap.parse_args(argv)
    try:
        if bool(args.sweeps) == (args.from_records is not None):
            raise UserError("give sweep directories or --from-records, not both and not neither")
        records = read_records(args.from_records) if args.from_records else [
            r for d in args.sweeps for r in load_records(d)]
        if not records:
            raise UserError("no finished runs in " + ", ".join(map(str, args.sweeps)))
        text = render(records)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(args.out / "records.json", {"format": 1, "records": [asdict(r) for r in records]})
            atomic_write_text(args.out / "report.md", text)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not args.quiet:
        print(text)


if __name__ == "__main__":
    main()
