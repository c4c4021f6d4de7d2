"""Learning table of a sweep: final return per seed, against a target, and the seed-mean curve at chosen steps.

    python -m marl_stability.studies.learning_table SWEEP_DIR [--target -35.3] [--at 1000000,2000000,3000000] [--out F.md]

For every arm of a finished (or partly finished) sweep: the final team return (each run's last evaluation) per
seed and its mean with the 95% percentile bootstrap CI the ablation report uses; how many seeds end at or above
``--target``; the mean over seeds of the evaluation curve at each ``--at`` env step (the first evaluation at or
after it, which every seed logs at the same steps when they share a config) and its best value; the first env step
where that mean reaches the target; wall time and env steps/s per run; and which detectors fired. The README's
MAPPO/IPPO benchmark table is this command's output on ``experiments/benchmark_ppo_spread.yaml``'s sweep.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from marl_stability.atomic import atomic_write_text
from marl_stability.errors import ArgumentParser, UserError
from marl_stability.runs.trials import collect
from marl_stability.studies.report import _mean, bootstrap_ci

DETECTOR_STEPS = ("collapse_step", "explosion_step", "nonfinite_step", "entropy_collapse_step", "kl_spike_step")


@dataclass
class ArmLearning:
    """One arm's numbers (finished runs only, in seed order)."""

    arm: str
    seeds: list[int]
    finals: list[float]
    curves: list[list[tuple[int, float]]]
    wall_minutes: list[float]
    steps_per_second: list[float]
    env_steps: list[int]
    fired: dict[str, int]

    def mean_curve(self) -> list[tuple[int, float]]:
        """Mean over seeds at the evaluation steps every seed logged."""
        common = sorted(set.intersection(*(set(s for s, _ in c) for c in self.curves))) if self.curves else []
        by_seed = [dict(c) for c in self.curves]
        return [(s, float(np.mean([c[s] for c in by_seed]))) for s in common]


def _fmt(x: float) -> str:
    return f"{x:.1f}".replace("-", "−")


def load(sweep: Path) -> list[ArmLearning]:
    """Every arm of the sweep with at least one finished run."""
    trials = collect(sweep)
    arms: dict[str, ArmLearning] = {}
    for row in sorted(trials.rows, key=lambda r: (r["arm"], int(r["seed"]))):
        s = trials.summaries.get(row["run_dir"])
        if s is None or s.final_return is None:
            continue
        a = arms.setdefault(row["arm"], ArmLearning(row["arm"], [], [], [], [], [], [], {k: 0 for k in DETECTOR_STEPS}))
        a.seeds.append(int(row["seed"]))
        a.finals.append(float(s.final_return))
        a.curves.append([(int(st), float(v)) for st, v in s.returns()])
        a.wall_minutes.append(float(s.wall_seconds) / 60.0)
        a.steps_per_second.append(float(s.env_steps_per_second))
        a.env_steps.append(int(s.env_steps))
        for k in DETECTOR_STEPS:
            a.fired[k] += getattr(s, k, None) is not None
    order = [arm.name for arm in trials.plan.arms]
    return [arms[n] for n in order if n in arms]


def _at(curve: list[tuple[int, float]], step: int) -> Optional[float]:
    return next((v for s, v in curve if s >= step), None)


def arm_row(a: ArmLearning, target: float, at: list[int]) -> str:
    lo, hi = bootstrap_ci((a.finals,), _mean)
    ci = f" [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) else ""
    curve = a.mean_curve()
    points = " / ".join(_fmt(v) if (v := _at(curve, s)) is not None else "–" for s in at)
    best_step, best = max(curve, key=lambda p: p[1]) if curve else (0, float("nan"))
    reached = next((s for s, v in curve if v >= target), None)
    per_seed = ", ".join(_fmt(f) for f in a.finals)
    return (f"| {a.arm} | {_fmt(float(np.mean(a.finals)))}{ci} | {per_seed} | {sum(f >= target for f in a.finals)}/"
            f"{len(a.finals)} | {points} | {_fmt(best)} ({best_step:,}) | "
            f"{f'{reached:,}' if reached is not None else 'never'} |")


def render(arms: list[ArmLearning], target: float, at: list[int]) -> str:
    head = ("| arm | final team return, mean [95% CI] | per seed | seeds ≥ target | seed-mean return at "
            + " / ".join(f"{s:,}" for s in at) + " env steps | best seed-mean (env step) | seed-mean reaches target at |")
    lines = [f"Target {_fmt(target)}; final = each run's last evaluation.", "", head, "|" + "---|" * 7]
    lines += [arm_row(a, target, at) for a in arms]
    lines.append("")
    for a in arms:
        fired = ", ".join(f"{k.removesuffix('_step')} {n}/{len(a.seeds)}" for k, n in a.fired.items() if n) or "none"
        lines.append(f"- {a.arm}: seeds {', '.join(map(str, a.seeds))}; env steps {min(a.env_steps):,}–"
                     f"{max(a.env_steps):,}; wall time {min(a.wall_minutes):.1f}–{max(a.wall_minutes):.1f} min per run "
                     f"({min(a.steps_per_second):,.0f}–{max(a.steps_per_second):,.0f} env steps/s); detectors fired: {fired}")
    return "\n".join(lines) + "\n"


def _steps(text: str) -> list[int]:
    try:
        steps = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--at must be comma-separated env steps, got {text!r}") from None
    if not steps or any(s < 0 for s in steps):
        raise UserError(f"--at must be non-negative env steps, got {text!r}")
    return steps


def main(argv: Optional[list[str]] = None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, help="sweep directory (marl-stability ablate --out)")
    ap.add_argument("--target", type=float, default=-35.3, help="team return to count seeds against (default: "
                    "MADDPG's maddpg_spread_fast.yaml mean, -35.3)")
    ap.add_argument("--at", default="1000000,2000000,3000000", help="env steps of the seed-mean curve to show")
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    try:
        at = _steps(args.at)
        arms = load(args.sweep)
        if not arms:
            raise UserError(f"{args.sweep}: no finished run with an evaluation")
        text = render(arms, args.target, at)
        if args.out is not None:
            atomic_write_text(args.out, text)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(text, end="")


if __name__ == "__main__":
    main()
