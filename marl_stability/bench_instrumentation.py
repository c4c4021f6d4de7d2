"""Cost of instrumentation: the same short training run with default logging vs with logging turned down.

    python -m marl_stability.bench_instrumentation [--steps N] [--repeats R]

Runs are interleaved (A, B, A, B, ...) in one process so machine noise hits both arms alike, and the
ratio of median wall times is printed. "Quiet" turns off the per-layer monitor and (almost) all scalar and
histogram writes; the statistics the algorithm needs for clipping and the detectors are still computed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from marl_stability.bench import timed_run


def one_run(overrides: list[str], steps: int, root: Path, tag: str) -> float:
    return timed_run(overrides, steps, root, tag, warmup=2000)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    arms = {
        "default logging": [],
        "quiet logging": ["train.log_every=1000000", "train.layer_stats=false", "train.histogram_every=1000000"],
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, overrides in arms.items():
                times[name].append(one_run(overrides, args.steps, Path(tmp), f"{name.split()[0]}_{r}"))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:16s} median {med[k]:.2f} s  runs {', '.join(f'{x:.2f}' for x in v)}")
    print(f"overhead of default logging: {med['default logging'] / med['quiet logging'] - 1:+.1%}")


if __name__ == "__main__":
    main()
