"""Training speed of two checkouts of this project, measured in one run with the arms interleaved.

    python -m marl_stability.bench.versions OLD_TREE NEW_TREE [--steps 20000] [--rounds 5]

Each round runs the same short training (``bench.training_rate``: experiments/maddpg_spread.yaml, no
evaluations or checkpoints) once per tree and arm, in a fresh interpreter with that tree first on the
import path, alternating trees so machine noise hits both alike. Prints the median env-steps/s per tree
and arm and the ratio new/old: the check that a refactor did not slow training down.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from marl_stability.errors import ArgumentParser

ARMS = {"batched agents": ["maddpg.batched_agents=auto"], "per-agent loop": ["maddpg.batched_agents=off"]}
# bench.speed since 0.2.0's layout; a flat marl_stability/bench.py in older checkouts.
_CODE = ("import sys, json; from pathlib import Path\n"
         "try:\n    from marl_stability.bench.speed import training_rate\n"
         "except ImportError:\n    from marl_stability.bench import training_rate\n"
         "print(json.dumps(training_rate(json.loads(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])))")


def rate(tree: Path, overrides: list[str], steps: int, root: Path, tag: str) -> float:
    import json

    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", _CODE, json.dumps(overrides), str(steps), str(root), tag], cwd=tree,
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    rates: dict[tuple[str, str], list[float]] = {(t, a): [] for t in trees for a in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for arm, overrides in ARMS.items():
                order = list(trees) if r % 2 == 0 else list(reversed(trees))  # neither tree always goes first
                for t in order:
                    rates[(t, arm)].append(rate(trees[t], overrides, args.steps, Path(tmp), f"{t}_{r}_{arm.split()[0]}"))
                    print(f"round {r} {arm:15s} {t}: {rates[(t, arm)][-1]:.1f} env-steps/s", flush=True)
    for arm in ARMS:
        old, new = statistics.median(rates[("old", arm)]), statistics.median(rates[("new", arm)])
        print(f"{arm:15s} old {old:8.1f}  new {new:8.1f} env-steps/s (medians of {args.rounds})  new/old {new / old:.3f}")


if __name__ == "__main__":
    main()
