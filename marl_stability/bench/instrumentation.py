"""Cost of instrumentation: the same short training run with and without a piece of it, timed in one process.

    python -m marl_stability.bench.instrumentation [--compare logging|plasticity] [--config PRESET]
                                                   [--steps N] [--repeats R]

Runs are interleaved (A, B, A, B, ...) in one process so machine noise hits both arms alike, and the
ratios of median wall times and of median process CPU times are printed (on a machine shared with other
jobs the CPU time, which does not count the time the process waits for a core, is the steadier of the two).

- ``--compare logging`` (default): default logging vs "quiet" logging, which turns off the per-layer
  monitor and (almost) all scalar and histogram writes; the statistics the algorithm needs for clipping and
  the detectors are still computed.
- ``--compare plasticity``: the plasticity metrics at their defaults (``plasticity.enabled=true``) vs off,
  everything else at the preset's settings. It also times the measurement itself on the trained networks
  (``feature_probes`` + ``plasticity.measure_all``, 20 repeats, median CPU time) and prints its share of an
  off run's CPU time at the measured rate (measurements = updates / every): a direct estimate that machine
  noise does not swamp the way it can a ratio of two run times.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from marl_stability.bench.speed import PRESET
from marl_stability.errors import ArgumentParser

ARMS = {
    "logging": {
        "default logging": [],
        "quiet logging": ["train.log_every=1000000", "train.layer_stats=false", "train.histogram_every=1000000"],
    },
    "plasticity": {
        "plasticity on": ["plasticity.enabled=true"],
        "plasticity off": ["plasticity.enabled=false"],
    },
}


def one_run(preset: Path | str, overrides: list[str], steps: int, root: Path, tag: str) -> tuple[float, float, Any]:
    """A short run without evaluations or checkpoints (MADDPG warm-up 2000 env steps): (wall seconds, process CPU
    seconds, trainer)."""
    from marl_stability.config import load_config
    from marl_stability.training.trainer import Trainer

    cfg = load_config(preset, [f"train.steps={steps}", "maddpg.warmup_steps=2000", "train.eval_every=10000000",
                               "train.checkpoint_every=10000000", *overrides])
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = Trainer(cfg, root / tag, quiet=True)
    trainer.run()
    return time.perf_counter() - t0, time.process_time() - c0, trainer


def measurement_seconds(trainer: Any, repeats: int = 20) -> float:
    """Median process CPU time of one plasticity measurement of every network of a trained algorithm."""
    from marl_stability.core import plasticity

    cfg = trainer.cfg.plasticity
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        plasticity.measure_all(trainer.algo.feature_probes(cfg.max_batch), cfg.taus, cfg.max_batch)
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", choices=sorted(ARMS), default="logging")
    ap.add_argument("--config", default=str(PRESET), help="preset (default: experiments/maddpg_spread.yaml)")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    arms = ARMS[args.compare]
    wall: dict[str, list[float]] = {k: [] for k in arms}
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    trainers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, overrides in arms.items():
                w, c, trainers[name] = one_run(args.config, overrides, args.steps, Path(tmp), f"{name.split()[-1]}_{r}")
                wall[name].append(w)
                cpu[name].append(c)
    on, off = list(arms)
    for label, times in (("wall", wall), ("cpu", cpu)):
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            print(f"{k:16s} {label:4s} median {med[k]:.2f} s  runs {', '.join(f'{x:.2f}' for x in v)}")
        print(f"overhead of {on} ({label} time): {med[on] / med[off] - 1:+.1%}")
    if args.compare == "plasticity":
        print(direct_cost(trainers[on], statistics.median(cpu[off])))


def direct_cost(trainer: Any, off_cpu_seconds: float) -> str:
    """One measurement's CPU time, times the number of measurements a run makes, as a share of the CPU time of a
    run without them."""
    every = trainer.cfg.plasticity.resolved_every(type(trainer.algo).on_policy)
    count = trainer.algo.updates // every
    one = measurement_seconds(trainer)
    return (f"one measurement of {len(trainer.algo.modules())} modules: {one * 1e3:.2f} ms; {count} measurements "
            f"({trainer.algo.updates} updates, every {every}): {one * count:.2f} s = {one * count / off_cpu_seconds:.2%} "
            f"of the median CPU time of a run without them")


if __name__ == "__main__":
    main()
