"""What each single fix measured against each failure mechanism: the table ``doctor`` ranks fixes by.

    python -m marl_stability.analysis.fix_evidence saturation-first=SWEEP explosion-first=SWEEP on-policy=SWEEP --out FILE

Each SWEEP is a single-fix sweep (``marl-stability ablate -c experiments/reproduce_single_fixes.yaml`` for the
saturation-first preset, ``... reproduce_single_fixes_explosion.yaml`` for the explosion-first one,
``... reproduce_mappo_single_fixes.yaml`` for MAPPO's on-policy failure): arms named
``failure`` and one arm per fix. Every finished run is labelled from its final evaluation exactly as
``marl-stability calibrate`` labels it (healthy, collapsed or diverged; never from the detectors), and each arm
gets its counts and final returns. A mechanism not given keeps its table from an existing ``--out`` file, so
one sweep can be redone alone. The copy shipped in the package, ``marl_stability/fixes/fix_evidence.json``, is what
``doctor`` reads: for the mechanism it finds in a run, it ranks the fixes by the share of seeds they left healthy,
then by their mean final return, and quotes the numbers.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from marl_stability.core.roads import ON_POLICY
from marl_stability.errors import ArgumentParser, UserError
from marl_stability.fixes import registry
from marl_stability.fixes.evidence import PACKAGED, load, ranked  # noqa: F401 -- this tool writes what they read
from marl_stability.runs.anchors import do_nothing_of, shared_team_return
from marl_stability.runs.labels import label_run
from marl_stability.runs.record import RunRecord
from marl_stability.runs.sweep_layout import FINAL_STATUSES
from marl_stability.runs.trials import collect

MECHANISMS = ("saturation-first", "explosion-first", ON_POLICY)


@dataclass
class ArmEvidence:
    """One arm of a single-fix sweep: how its seeds ended."""

    arm: str
    fix: Optional[str]  # the doctor's fix name (None for the failure arm and arms doctor does not know)
    seeds: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # per seed: healthy | collapsed | diverged | degraded
    final_returns: list[Optional[float]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def healthy(self) -> int:
        return self.labels.count("healthy")

    def mean_return(self) -> Optional[float]:
        vals = [r for r in self.final_returns if r is not None]
        return sum(vals) / len(vals) if vals else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "n": self.n, "healthy": self.healthy, "collapsed": self.labels.count("collapsed"),
                "diverged": self.labels.count("diverged"), "degraded": self.labels.count("degraded"),
                "mean_final_return": self.mean_return()}


def sweep_evidence(sweep: Path, mechanism: str = "saturation-first") -> dict[str, Any]:
    """Every finished run of one single-fix sweep, labelled; ``{"sweep", "env", "env_steps", "algo", "arms": {...}}``."""
    trials = collect(sweep)
    # single-fix arm name -> the title of the fix it measured (doctor's name), among the mechanism's family's fixes
    arm_fix = registry.arm_fixes(registry.ON if mechanism == ON_POLICY else registry.OFF)
    arms: dict[str, ArmEvidence] = {}
    env, steps, algo = None, None, None
    for row in sorted(trials.rows, key=lambda r: (r["arm"], r["seed"])):
        if row["status"] not in FINAL_STATUSES:
            continue
        summary = trials.summaries[row["run_dir"]]
        config = trials.plan.arm(row["arm"]).config
        env, steps, algo = config["env"]["id"], config["train"]["steps"], config["algo"]
        label = label_run(summary, config, RunRecord(sweep / row["run_dir"]).scalars, do_nothing_of(config),
                          judge_drop=shared_team_return(config)).label
        ev = arms.setdefault(row["arm"], ArmEvidence(row["arm"], arm_fix.get(row["arm"])))
        ev.seeds.append(int(row["seed"]))
        ev.labels.append(label)
        ev.final_returns.append(summary.final_return)
    if "failure" not in arms:
        raise UserError(f"{sweep}: no finished run of a 'failure' arm (is it a single-fix sweep?)")
    return {"sweep": trials.plan.name, "env": env, "env_steps": steps, "algo": algo,
            "arms": {a: ev.to_json() for a, ev in arms.items()}}


def _parse_pairs(pairs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in pairs:
        name, sep, path = p.partition("=")
        if not sep or name not in MECHANISMS or not path:
            raise UserError(f"expected MECHANISM=SWEEP_DIR with MECHANISM one of {', '.join(MECHANISMS)}, got {p!r}")
        if name in out:
            raise UserError(f"{name} given twice")
        out[name] = Path(path)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    from marl_stability.atomic import atomic_write_json

    parser = ArgumentParser(prog="python -m marl_stability.analysis.fix_evidence", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", metavar="MECHANISM=SWEEP_DIR")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"output JSON (the copy doctor reads: {PACKAGED}); other mechanisms' tables in it are kept")
    args = parser.parse_args(argv)
    try:
        if args.out.is_dir():
            raise UserError(f"--out {args.out} is a directory")
        sweeps = _parse_pairs(args.sweeps)
        kept = load(args.out).get("mechanisms") if args.out.exists() else {}
        data = {"mechanisms": {**(kept if isinstance(kept, dict) else {}),
                               **{m: sweep_evidence(p, m) for m, p in sweeps.items()}}}
        atomic_write_json(args.out, data)
    except (UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for m in sorted(sweeps):
        d = data["mechanisms"][m]
        print(f"{m}: {d['sweep']} ({d['env']}, {d['env_steps']} env steps)")
        for r in ranked(data, m):
            print(f"  {r['fix']}: healthy {r['healthy']}/{r['n']}, mean final return {r['mean_final_return']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
