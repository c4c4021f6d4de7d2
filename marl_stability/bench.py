"""Benchmarks: ratios measured in one run (the machines are shared and noisy), written to bench.json.

    python -m marl_stability.bench [--quick] [--out bench.json] [--seeds 5]

1. env steps/s of the batched numpy port vs mpe2 itself on simple_spread_v3 (continuous), B in {1, 16,
   256, 1024}: mpe2 is one ParallelEnv stepped with random actions (its best case, no vector overhead).
2. training env-steps/s at a fixed update-to-data ratio: the trainer on the fast port with 8 env copies and
   batched agents (maddpg.batched_agents=auto) vs the same algorithm on mpe2 with one env copy and the
   per-agent loop (per-env, per-agent loops), both from the preset experiments/maddpg_spread.yaml, the arms
   interleaved; also the fast port with the per-agent loop, to separate the two gains; then both again at
   openai/maddpg's ratio (one update per 100 env steps).
3. full runs of experiments/maddpg_spread_fast.yaml (one per seed, one after the other): wall time, final,
   last-3 mean and best team return, and the env step and wall second at which an evaluation first reached
   the target: normalized score 0.7 between the measured random policy (0) and the hand-coded assignment
   controller (1) of ``marl_stability.anchors``, i.e. a team return of -34.4.
4. peak resident memory of the process (the full runs dominate it).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from marl_stability.anchors import SPREAD_ASSIGNMENT, SPREAD_RANDOM
from marl_stability.fmt import fmt_number

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
PRESET = EXPERIMENTS / "maddpg_spread.yaml"  # the training-rate comparison
FULL_RUN_PRESET = EXPERIMENTS / "maddpg_spread_fast.yaml"  # the full runs toward the target return
TARGET_NORMALIZED = 0.7
TARGET_RETURN = round(SPREAD_RANDOM + TARGET_NORMALIZED * (SPREAD_ASSIGNMENT - SPREAD_RANDOM), 1)  # -34.4
BATCHED, LOOP = "maddpg.batched_agents=auto", "maddpg.batched_agents=off"


def env_steps_per_second_mpe2(seconds: float) -> float:
    from mpe2 import simple_spread_v3

    env = simple_spread_v3.parallel_env(N=3, max_cycles=25, continuous_actions=True)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        actions = {a: rng.random(5, dtype=np.float32) for a in env.agents}
        _, _, term, trunc, _ = env.step(actions)
        steps += 1
        if any(term.values()) or any(trunc.values()):
            env.reset()
    return steps / (time.perf_counter() - t0)


def env_steps_per_second_fast(num_envs: int, seconds: float) -> float:
    from envs.fast_mpe import FastMPEVectorEnv

    venv = FastMPEVectorEnv("simple_spread_v3", {"N": 3, "max_cycles": 25, "continuous_actions": True}, num_envs, 0)
    venv.reset()
    rng = np.random.default_rng(0)
    actions = rng.random((16, num_envs, 3, 5), dtype=np.float32)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        venv.step(actions[steps % 16])
        steps += 1
    return steps * num_envs / (time.perf_counter() - t0)


def timed_run(overrides: list[str], steps: int, root: Path, tag: str, warmup: int) -> tuple[float, dict[str, Any]]:
    """A short run of the preset without evaluations or checkpoints: (wall seconds, summary)."""
    from marl_stability.config import load_config
    from marl_stability.trainer import Trainer

    cfg = load_config(PRESET, [f"train.steps={steps}", f"maddpg.warmup_steps={warmup}", "train.eval_every=10000000",
                               "train.checkpoint_every=10000000", *overrides])
    t0 = time.perf_counter()
    summary = Trainer(cfg, root / tag, quiet=True).run()
    return time.perf_counter() - t0, summary


def training_rate(overrides: list[str], steps: int, root: Path, tag: str) -> float:
    seconds, summary = timed_run(overrides, steps, root, tag, warmup=1000)
    return summary["env_steps"] / seconds


class EvalClock:
    """A metrics sink that notes the wall time (seconds since the run started) of every evaluation."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.at: dict[int, float] = {}

    def scalar(self, tag: str, value: float, step: int) -> None:
        if tag == "eval/team_return":
            self.at[step] = time.perf_counter() - self.t0

    def histogram(self, tag: str, values: Any, step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def median_rates(arms: dict[str, list[str]], steps: int, rounds: int, root: Path, tag: str) -> dict[str, float]:
    """Training env-steps/s of each arm (its config overrides), arms interleaved, median over ``rounds``."""
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for name, overrides in arms.items():
            rates[name].append(training_rate(overrides, steps, root, f"{tag}_{name}_{r}"))
    return {name: statistics.median(v) for name, v in rates.items()}


def full_run(seed: int, steps: int | None, root: Path, preset: Path = FULL_RUN_PRESET) -> dict[str, Any]:
    """One full training run of ``preset`` (batched agents): wall time, final/best return, and the env step and
    wall second of the first evaluation at or above the target. Evaluations average eval_episodes episodes,
    so the first crossing is an optimistic reading of a noisy curve; the mean of the last 3 evaluations is
    the steadier number."""
    from marl_stability.config import load_config
    from marl_stability.trainer import Trainer

    overrides = [f"seed={seed}", BATCHED] + ([f"train.steps={steps}"] if steps else [])
    cfg = load_config(preset, overrides)
    clock = EvalClock()
    s = Trainer(cfg, root / f"full_s{seed}", quiet=True, extra_sinks=[clock]).run()
    wall = time.perf_counter() - clock.t0
    first = next((e for e in s["eval_history"] if e["team_return"] >= TARGET_RETURN), None)
    last3 = [e["team_return"] for e in s["eval_history"][-3:]]
    return {"seed": seed, "preset": preset.name, "seconds": round(wall, 1), "final_return": s["final_return"],
            "last3_mean_return": round(float(np.mean(last3)), 2) if last3 else None, "best_return": s["best_return"],
            "target_reached_at_env_step": first["env_steps"] if first else None,
            "target_reached_at_seconds": round(clock.at[first["env_steps"]], 1) if first else None,
            "env_steps": s["env_steps"], "eval_episodes": cfg.train.eval_episodes,
            "curve": [(e["env_steps"], round(e["team_return"], 2), round(clock.at.get(e["env_steps"], float("nan")), 1))
                      for e in s["eval_history"]]}


def print_targets(bench: dict[str, Any], target: float = TARGET_RETURN) -> list[Any]:
    """From a bench.json's full-run curves ([env step, team return, wall second] per evaluation): the first
    evaluation at or above ``target`` per seed (None when never), printed; no training."""
    hits = []
    for r in bench.get("full_runs", []):
        first = next((c for c in r.get("curve", []) if c[1] >= target), None)
        hits.append(first)
        where = f"env step {first[0]} at {first[2]} s" if first else "never"
        print(f"full run seed {r['seed']}: final {fmt_number(r['final_return'], '.1f')}, first evaluation >= {target}: "
              f"{where}")
    return hits


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="marl-stability benchmarks (ratios measured in one run)")
    ap.add_argument("--quick", action="store_true", help="a few minutes: short timings, 1 seed, 30k-step full run")
    ap.add_argument("--out", default="bench.json", help="where to write the numbers")
    ap.add_argument("--seeds", type=int, default=5, help="full runs (ignored with --quick: 1)")
    ap.add_argument("--targets", type=Path, default=None,
                    help="only print when each full run of this bench.json first reached the target return")
    args = ap.parse_args(argv)
    if args.targets is not None:
        print_targets(json.loads(args.targets.read_text()))
        return
    secs = 1.0 if args.quick else 3.0
    out: dict[str, Any] = {"quick": args.quick, "machine": {"python": sys.version.split()[0]}}

    mpe2_rate = env_steps_per_second_mpe2(secs)
    out["env_steps_per_second"] = {"mpe2": round(mpe2_rate)}
    out["env_speedup"] = {}
    for b in (1, 16, 256, 1024):
        rate = env_steps_per_second_fast(b, secs)
        out["env_steps_per_second"][f"fast_B{b}"] = round(rate)
        out["env_speedup"][str(b)] = round(rate / mpe2_rate, 1)
        print(f"env  B={b:5d}: fast {rate:11,.0f} steps/s   mpe2 {mpe2_rate:7,.0f}   x{rate / mpe2_rate:7.1f}", flush=True)

    train_steps = 6000 if args.quick else 20000
    rounds = 1 if args.quick else 2
    mpe2 = ["env.backend=pettingzoo", "env.num_envs=1", LOOP]
    with tempfile.TemporaryDirectory() as tmp:
        med = median_rates({"fast_batched": [BATCHED], "fast_per_agent": [LOOP], "mpe2_per_env": mpe2},
                           train_steps, rounds, Path(tmp), "utd25")
        out["train_env_steps_per_second"] = {k: round(v, 1) for k, v in med.items()}
        out["train_speedup"] = round(med["fast_batched"] / med["mpe2_per_env"], 2)
        out["train_speedup_batched_agents_only"] = round(med["fast_batched"] / med["fast_per_agent"], 2)
        print(f"train: fast+batched {med['fast_batched']:.0f} env-steps/s vs mpe2 per-env per-agent "
              f"{med['mpe2_per_env']:.0f}  x{out['train_speedup']}  (fast per-agent {med['fast_per_agent']:.0f}:"
              f" batching alone x{out['train_speedup_batched_agents_only']})", flush=True)
        # The same comparison at openai/maddpg's update-to-data ratio (one update per 100 env steps).
        utd = "maddpg.update_every=100"
        med100 = median_rates({"fast_batched": [BATCHED, utd], "mpe2_per_env": [*mpe2, utd]}, train_steps, rounds,
                              Path(tmp), "utd100")
        out["train_env_steps_per_second_update_every_100"] = {k: round(v, 1) for k, v in med100.items()}
        out["train_speedup_update_every_100"] = round(med100["fast_batched"] / med100["mpe2_per_env"], 2)
        print(f"train at one update per 100 env steps: fast+batched {med100['fast_batched']:.0f} vs mpe2 "
              f"{med100['mpe2_per_env']:.0f}  x{out['train_speedup_update_every_100']}", flush=True)

        seeds = [0] if args.quick else list(range(args.seeds))
        runs = [full_run(s, 30000 if args.quick else None, Path(tmp)) for s in seeds]
        for r in runs:
            # fmt_number prints n/a for a run that diverged before any evaluation
            print(f"full run seed {r['seed']} ({r['preset']}): {r['seconds']} s, final {fmt_number(r['final_return'], '.1f')},"
                  f" mean of last 3 evaluations {fmt_number(r['last3_mean_return'], '.1f')}, best {fmt_number(r['best_return'], '.1f')},"
                  f" first evaluation >= "
                  f"{TARGET_RETURN}: env step {r['target_reached_at_env_step']} at {r['target_reached_at_seconds']} s",
                  flush=True)
    out["full_run_seconds"] = [r["seconds"] for r in runs]
    out["full_run_final_return"] = [r["final_return"] for r in runs]
    out["full_run_seconds_to_target"] = [r["target_reached_at_seconds"] for r in runs]
    out["full_runs"] = runs
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    print(f"peak RSS {out['peak_rss_mb']} MB")
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
