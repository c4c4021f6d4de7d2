"""Compare groups of finished runs side by side (e.g. MATD3 vs MADDPG on the same preset and budget).

    python -m marl_stability.studies.compare_runs RUN_DIR... [--group-by algo|name] [--reference maddpg]

Each run directory's ``summary.json`` is read through ``RunSummary``. Runs are grouped by their algorithm
(or by the run directory's name without its ``_s<seed>`` suffix). For each group: seeds, final and best team
return (mean with a 95% percentile bootstrap CI, and the IQM), the mean of the last 3 evaluations, the
wall seconds per run and the env steps per second; with ``--reference``, each group's probability of
improvement over it. Prints a markdown table.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from marl_stability.core.summary import RunSummary
from marl_stability.runs.record import RunRecord
from marl_stability.errors import ArgumentParser, UserError
from marl_stability.fmt import fmt_number
from marl_stability.studies.report import _mean, bootstrap_ci, iqm, prob_improvement


def _group(run: Path, s: RunSummary, by: str) -> str:
    return s.algo if by == "algo" else re.sub(r"_s\d+$", "", run.name)


def _row(name: str, runs: list[RunSummary], reference: list[float] | None) -> str:
    finals = [s.final_return for s in runs if s.final_return is not None]
    last3 = [float(np.mean([r for _, r in s.returns()[-3:]])) for s in runs if s.returns()]
    lo, hi = bootstrap_ci((finals,), _mean)
    pi = ""
    if reference is not None:
        pi = fmt_number(float(prob_improvement(finals, reference)), ".2f")
    return (f"| {name} | {len(runs)} | {fmt_number(float(np.mean(finals)), '.1f')} [{fmt_number(lo, '.1f')}, "
            f"{fmt_number(hi, '.1f')}] | {fmt_number(float(iqm(finals)), '.1f')} | "
            f"{fmt_number(float(np.mean(last3)), '.1f')} | {fmt_number(float(np.mean([s.best_return for s in runs])), '.1f')} | "
            f"{fmt_number(statistics.median(s.wall_seconds for s in runs), '.0f')} | "
            f"{fmt_number(statistics.median(s.env_steps_per_second or 0 for s in runs), '.0f')} | {pi} |")


COMPARABLE = ("completed", "diverged")


def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--group-by", choices=("algo", "name"), default="algo")
    ap.add_argument("--reference", default=None, help="group the others are compared with (probability of improvement)")
    args = ap.parse_args(argv)
    groups: dict[str, list[RunSummary]] = defaultdict(list)
    for run in args.runs:
        s = RunRecord(run.parent if run.name == "summary.json" else run).summary
        if s is None:
            raise UserError(f"{run}: no readable summary.json")
        if s.status not in COMPARABLE:  # interrupted / env_error runs did not use their budget
            raise UserError(f"{run}: status {s.status}; compare runs that completed (or diverged)")
        groups[_group(run, s, args.group_by)].append(s)
    ref = None
    if args.reference is not None:
        if args.reference not in groups:
            raise UserError(f"--reference {args.reference}: no such group ({', '.join(groups)})")
        ref = [s.final_return for s in groups[args.reference] if s.final_return is not None]
    print("| group | seeds | final team return, mean [95% CI] | IQM | mean of last 3 evaluations | best | wall s per "
          "run (median) | env steps/s (median) | P(final > reference) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runs in groups.items():
        print(_row(name, runs, ref if name != args.reference else None))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
