"""Benchmarks: ratios measured in one run (the machines are shared and noisy), written to bench.json.

    python -m marl_stability.bench.speed [--quick] [--out bench.json] [--seeds 5] [--env-only]

1. env steps/s of the batched numpy port vs mpe2 itself on every mpe2 task (continuous actions), B in
   {1, 16, 256, 1024}: mpe2 is one ParallelEnv stepped with random actions (its best case, no vector
   overhead); per task the arms are interleaved, three rounds, medians. ``--env-only`` runs just this part.
2. training env-steps/s at a fixed update-to-data ratio: the trainer on the fast port with 8 env copies and
   batched agents (maddpg.batched_agents=auto) vs the same algorithm on mpe2 with one env copy and the
   per-agent loop (per-env, per-agent loops), both from the preset experiments/maddpg_spread.yaml, the arms
   interleaved; also the fast port with the per-agent loop, to separate the two gains; then both again at
   openai/maddpg's ratio (one update per 100 env steps).
3. full runs of experiments/maddpg_spread_fast.yaml (one per seed, one after the other): wall time, final,
   last-3 mean and best team return, and the env step and wall second at which an evaluation first reached
   the target: normalized score 0.7 between the measured random policy (0) and the hand-coded assignment
   controller (1) of ``marl_stability.runs.anchors``, i.e. a team return of -34.4.
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

from marl_stability.runs.anchors import SPREAD_ASSIGNMENT, SPREAD_RANDOM
from marl_stability.config import presets_dir
from marl_stability.errors import ArgumentParser
from marl_stability.fmt import fmt_number

EXPERIMENTS = presets_dir() or Path(__file__).resolve().parents[2] / "experiments"  # also from a wheel install
PRESET = EXPERIMENTS / "maddpg_spread.yaml"  # the training-rate comparison
FULL_RUN_PRESET = EXPERIMENTS / "maddpg_spread_fast.yaml"  # the full runs toward the target return
TARGET_NORMALIZED = 0.7
TARGET_RETURN = round(SPREAD_RANDOM + TARGET_NORMALIZED * (SPREAD_ASSIGNMENT - SPREAD_RANDOM), 1)  # -34.4
BATCHED, LOOP = "maddpg.batched_agents=auto", "maddpg.batched_agents=off"


ENV_BATCHES = (1, 16, 256, 1024)


def _env_kwargs(env_id: str, env_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Continuous actions and mpe2's default episode length unless given (spread keeps its historic N=3)."""
    base: dict[str, Any] = {"max_cycles": 25, "continuous_actions": True}
    if env_id == "simple_spread_v3":
        base["N"] = 3
    return {**base, **(env_kwargs or {})}


def env_steps_per_second_mpe2(seconds: float, env_id: str = "simple_spread_v3",
                              env_kwargs: dict[str, Any] | None = None) -> float:
    """mpe2 itself: one ParallelEnv stepped with uniform random actions (its best case, no vector overhead)."""
    import importlib

    env = importlib.import_module(f"mpe2.{env_id}").parallel_env(**_env_kwargs(env_id, env_kwargs))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    dims = {a: env.action_space(a).shape for a in env.possible_agents}
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        actions = {a: rng.random(dims[a], dtype=np.float32) for a in env.agents}
        _, _, term, trunc, _ = env.step(actions)
        steps += 1
        if any(term.values()) or any(trunc.values()):
            env.reset()
    env.close()
    return steps / (time.perf_counter() - t0)


def env_steps_per_second_fast(num_envs: int, seconds: float, env_id: str = "simple_spread_v3",
                              env_kwargs: dict[str, Any] | None = None) -> float:
    """The batched numpy port with ``num_envs`` copies (env steps summed over copies), random actions."""
    from marl_stability.envs.fast_mpe import FastMPEVectorEnv

    venv = FastMPEVectorEnv(env_id, _env_kwargs(env_id, env_kwargs), num_envs, 0)
    venv.reset()
    lay = venv.layout
    actions = np.random.default_rng(0).random((16, num_envs, lay.num_agents, lay.max_act_dim), dtype=np.float32)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        venv.step(actions[steps % 16])
        steps += 1
    return steps * num_envs / (time.perf_counter() - t0)


def env_speed_table(seconds: float, rounds: int, tasks: tuple[str, ...] | None = None,
                    batches: tuple[int, ...] = ENV_BATCHES) -> dict[str, dict[str, Any]]:
    """Per task: env steps/s of mpe2 and of the port at each batch size, and the ratios. The arms of a task
    are interleaved and repeated ``rounds`` times, so a load change on a shared machine hits mpe2 and the
    port alike: the rates are medians over the rounds, and each ratio is the median over the rounds of the
    round's own ratio (port / mpe2 measured seconds apart), with its range over the rounds."""
    from marl_stability.envs.fast_mpe import SUPPORTED_ENV_IDS

    table: dict[str, dict[str, Any]] = {}
    for env_id in tasks or SUPPORTED_ENV_IDS:
        rates: dict[str, list[float]] = {"mpe2": [], **{f"fast_B{b}": [] for b in batches}}
        for _ in range(rounds):
            rates["mpe2"].append(env_steps_per_second_mpe2(seconds, env_id))
            for b in batches:
                rates[f"fast_B{b}"].append(env_steps_per_second_fast(b, seconds, env_id))
        med = {k: statistics.median(v) for k, v in rates.items()}
        paired = {str(b): [f / m for f, m in zip(rates[f"fast_B{b}"], rates["mpe2"])] for b in batches}
        row = {"steps_per_second": {k: round(v) for k, v in med.items()},
               "speedup": {b: round(statistics.median(r), 1) for b, r in paired.items()},
               "speedup_range": {b: [round(min(r), 1), round(max(r), 1)] for b, r in paired.items()}}
        table[env_id] = row
        ratios = "  ".join(f"B={b}: x{row['speedup'][str(b)]:,.1f}" for b in batches)
        print(f"env  {env_id:27s} mpe2 {med['mpe2']:8,.0f} steps/s   {ratios}", flush=True)
    return table


def env_speed_markdown(table: dict[str, dict[str, Any]], batches: tuple[int, ...] = ENV_BATCHES,
                       spread_at: int = 256) -> str:
    """The env-speed table (docs/environments.md): one row per task, port steps/s and ratio to mpe2 per batch size, and the
    range of the per-round ratios at ``spread_at`` (when the table has it)."""
    ranged = all("speedup_range" in row for row in table.values()) and spread_at in batches
    head = "| task | mpe2 steps/s | " + " | ".join(f"B = {b}" for b in batches) + " |"
    head += f" B = {spread_at}: ratio per round, min – max |" if ranged else ""
    lines = [head, "|---" * (2 + len(batches) + ranged) + "|"]
    for env_id, row in table.items():
        sps = row["steps_per_second"]
        cells = [f"{sps[f'fast_B{b}']:,} (×{row['speedup'][str(b)]:,.0f})" for b in batches]
        if ranged:
            lo, hi = row["speedup_range"][str(spread_at)]
            cells.append(f"×{lo:,.0f} – ×{hi:,.0f}")
        lines.append(f"| `{env_id}` | {sps['mpe2']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_env_speed(quick: bool, rounds: int | None = None) -> dict[str, Any]:
    """The env-speed section of bench.json: every task at every batch size, with the machine's load."""
    import os

    seconds, default_rounds = (0.3, 1) if quick else (1.0, 3)
    rounds = rounds or default_rounds
    load = os.getloadavg()
    table = env_speed_table(seconds, rounds)
    print(env_speed_markdown(table), flush=True)
    return {"env_speed": table, "env_speed_setup": {
        "seconds_per_measurement": seconds, "rounds": rounds, "cpus": os.cpu_count(),
        "load_average_1min_at_start": round(load[0], 2), "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "actions": "uniform random continuous", "mpe2": "one ParallelEnv, no vector wrapper"}}


def write_env_only(sections: dict[str, Any], path: Path, quick: bool) -> None:
    """Write the env-speed sections into ``path``, keeping the other sections of an existing bench.json
    (the training benchmarks take an hour to remeasure), including the spread-only keys of the full run
    they belong to."""
    previous = json.loads(path.read_text()) if path.is_file() else {}
    previous.update({k: v for k, v in sections.items() if k != "quick"})
    previous["env_speed_quick"] = quick
    path.write_text(json.dumps(previous, indent=2) + "\n")
    print(f"wrote the env-speed sections of {path}")


def _spread_keys(env: dict[str, Any]) -> dict[str, Any]:
    """The historic spread-only keys, from the spread row of the env-speed table."""
    row = env["env_speed"]["simple_spread_v3"]
    sps = row["steps_per_second"]
    return {"env_steps_per_second": sps, "env_speedup": row["speedup"]}


def timed_run(overrides: list[str], steps: int, root: Path, tag: str, warmup: int) -> tuple[float, dict[str, Any]]:
    """A short run of the preset without evaluations or checkpoints: (wall seconds, summary)."""
    from marl_stability.config import load_config
    from marl_stability.training.trainer import Trainer

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
    from marl_stability.training.trainer import Trainer

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgumentParser(description="marl-stability benchmarks (ratios measured in one run)")
    ap.add_argument("--quick", action="store_true", help="a few minutes: short timings, 1 seed, 30k-step full run")
    ap.add_argument("--out", default="bench.json", help="where to write the numbers")
    ap.add_argument("--seeds", type=int, default=5, help="full runs (ignored with --quick: 1)")
    ap.add_argument("--env-only", action="store_true",
                    help="only the env-speed table (every task, B = 1/16/256/1024 vs mpe2); updates just those "
                         "sections of --out if it exists")
    ap.add_argument("--rounds", type=_positive_int, default=None,
                    help="rounds of the env-speed table (default 3, 1 with --quick): more rounds, steadier ratios")
    ap.add_argument("--targets", type=Path, default=None,
                    help="only print when each full run of this bench.json first reached the target return")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    if args.targets is not None:
        print_targets(json.loads(args.targets.read_text()))
        return
    out: dict[str, Any] = {"quick": args.quick, "machine": {"python": sys.version.split()[0]}}

    env = run_env_speed(args.quick, args.rounds)
    if args.env_only:
        write_env_only(env, Path(args.out), args.quick)
        return
    out.update(_spread_keys(env))
    out.update(env)

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
