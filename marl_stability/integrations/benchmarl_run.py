"""BenchMARL's MAPPO on mpe2 simple_spread_v3 at the MAPPO paper's settings, with this project's callback: the proof run of
the BenchMARL integration, a fix applied through BenchMARL's own config, and the callback's overhead.

    python -m marl_stability.integrations.benchmarl_run --seeds 0 1 2 --out runs/benchmarl/mappo
    python -m marl_stability.integrations.benchmarl_run --seeds 0 1 2 --fix lr_eps --out runs/benchmarl/lr_eps
    python -m marl_stability.integrations.benchmarl_run --overhead --seeds 0 --frames 102400 --out runs/benchmarl/overhead
    python -m marl_stability.integrations.benchmarl_run --table runs/benchmarl/mappo runs/benchmarl/lr_eps --figure f.png

Settings (as far as BenchMARL 1.5 allows; ``--frames`` and ``--eval-every`` change the budget): 3,200 env steps per
batch from 128 envs (25 steps each, ``max_cycles`` 25), 10 epochs of one minibatch of 3,200, Adam lr 7e-4 eps 1e-5,
global-norm clipping 10, entropy 0.01, GAE lambda 0.95, gamma 0.99, 64x64 MLPs with LayerNorm, one policy and one critic
shared by the agents, 50 deterministic evaluation episodes every ``--eval-every`` env steps, one torch thread. Each run
writes BenchMARL's folder under ``--out``/``<name>_s<seed>`` with this project's run folder ``marl_stability`` inside.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

PAPER_FRAMES = 307_200


def build(seed: int, out: Path, frames: int, eval_every: int, fix: Optional[str], callback: bool) -> tuple[Any, Any]:
    """(the BenchMARL experiment, its callback or None)."""
    import torch
    from benchmarl.algorithms import MappoConfig
    from benchmarl.experiment import Experiment, ExperimentConfig
    from benchmarl.models.mlp import MlpConfig

    from marl_stability.integrations.benchmarl import MarlStabilityCallback, apply_fix, mpe2_task

    torch.set_num_threads(1)
    cfg = ExperimentConfig.get_from_yaml()
    cfg.max_n_frames = frames
    cfg.on_policy_collected_frames_per_batch, cfg.on_policy_n_envs_per_worker = 3200, 128
    cfg.on_policy_n_minibatch_iters, cfg.on_policy_minibatch_size = 10, 3200
    cfg.lr, cfg.adam_eps, cfg.clip_grad_norm, cfg.clip_grad_val, cfg.gamma = 7e-4, 1e-5, True, 10.0, 0.99
    cfg.evaluation_interval, cfg.evaluation_episodes, cfg.evaluation_deterministic_actions = eval_every, 50, True
    cfg.loggers, cfg.create_json, cfg.render, cfg.checkpoint_at_end = ["csv"], True, False, False
    cfg.share_policy_params = True
    cfg.save_folder = str(out)
    algo = MappoConfig.get_from_yaml()
    algo.entropy_coef, algo.lmbda, algo.share_param_critic = 0.01, 0.95, True
    models = [MlpConfig.get_from_yaml() for _ in range(2)]
    for m in models:
        m.num_cells, m.norm_class, m.norm_kwargs = [64, 64], torch.nn.LayerNorm, {"normalized_shape": 64}
    if fix is not None:
        apply_fix(fix, cfg, algo, *models)
    cb = MarlStabilityCallback() if callback else None
    out.mkdir(parents=True, exist_ok=True)
    experiment = Experiment(task=mpe2_task("simple_spread_v3"), algorithm_config=algo, model_config=models[0],
                            critic_model_config=models[1], seed=seed, config=cfg, callbacks=[cb] if cb else [])
    return experiment, cb


def run_one(seed: int, out: Path, frames: int, eval_every: int, fix: Optional[str], callback: bool = True) -> dict[str, Any]:
    experiment, cb = build(seed, out, frames, eval_every, fix, callback)
    t = time.perf_counter()
    experiment.run()
    wall = time.perf_counter() - t
    row: dict[str, Any] = {"seed": seed, "fix": fix, "callback": callback, "wall_seconds": round(wall, 2),
                           "folder": str(experiment.folder_name)}
    if cb is not None:
        summary = json.loads((cb.dir / "summary.json").read_text())
        row.update(run=str(cb.dir), status=summary["status"], final_return=summary.get("final_return"),
                   callback_seconds=round(cb.seconds, 2),
                   evals=[(p["env_steps"], round(p["team_return"], 1)) for p in summary["eval_history"]],
                   detectors=summary["detector_messages"])
    return row


def overhead(seeds: list[int], out: Path, frames: int, eval_every: int, repeats: int) -> None:
    """Alternate runs without and with the callback (same seed and settings) and print the ratio of median wall times,
    measured in this one call."""
    walls: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):
        for seed in seeds:
            for cb in (False, True) if r % 2 == 0 else (True, False):
                row = run_one(seed, out / f"{'cb' if cb else 'plain'}_r{r}_s{seed}", frames, eval_every, None, cb)
                walls[cb].append(row["wall_seconds"])
                print(json.dumps(row if not cb else {k: row[k] for k in ("seed", "callback", "wall_seconds", "callback_seconds")}),
                      flush=True)
    plain, with_cb = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"median wall: without callback {plain:.1f} s, with {with_cb:.1f} s: overhead {100 * (with_cb / plain - 1):+.1f}% "
          f"({len(walls[True])} runs each, alternating)")


def table(folders: list[Path]) -> str:
    """A markdown table of the BenchMARL runs under ``folders`` (their ``marl_stability`` run folders): returns at a third,
    two thirds and the end of the budget, the label, the detectors (first step each) and doctor's first fix."""
    from marl_stability.analysis.doctor import diagnose
    from marl_stability.runs.record import find_runs

    rows = ["| run | seed | team return at 1/3, 2/3, end | label | detectors (first env step) | doctor's first fix |",
            "|---|---|---|---|---|---|"]
    for folder in folders:
        for record in find_runs([folder]):
            s = record.summary
            if s is None or not s.finished:  # still running, or killed before its end
                continue
            d = diagnose(record.dir)
            evals = dict(s.returns())
            marks = [min(evals, key=lambda k: abs(k - s.env_steps * f / 3)) for f in (1, 2, 3)] if evals else []
            fired = {k: getattr(s, f"{k}_step") for k in ("explosion", "collapse", "nonfinite", "entropy_collapse",
                                                          "kl_spike", "degradation")}
            label = record.label
            first = next((f for f in d["fixes"] if f["set"]), None)
            rows.append(f"| {record.dir.parent.parent.name} | {s.seed} | " + " / ".join(f"{evals[m]:.1f}" for m in marks)
                        + f" | {label.label}{f' ({label.kind})' if label.kind else ''} | "
                        + (", ".join(f"{k} {v:,}" for k, v in fired.items() if v is not None) or "none")
                        + f" | {first['id'] if first else '-'} |")
    return "\n".join(rows)


FIGURE_TAGS = (("eval/team_return", "team return (evaluation, deterministic)"),
               ("policy/log_std_max/agent_0", "largest log-std of agent_0's TanhNormal (collected batch)"),
               ("policy/entropy/agent", "policy entropy per action dimension (BenchMARL's estimate)"),
               ("policy/saturation/agent_0", "agent_0's actions at a bound (collected batch)"))


def figure(folders: list[Path], out: Path) -> None:
    """The runs under ``folders`` (one colour per folder: an arm) on the four signals of the proof, to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from marl_stability.runs.record import find_runs

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for k, folder in enumerate(folders):
        for record in (r for r in find_runs([folder]) if r.summary is not None and r.summary.finished):
            for ax, (tag, _) in zip(axes.flat, FIGURE_TAGS):
                pts = record.series(tag)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{k}", alpha=0.8, lw=1.2,
                        label=f"{folder.name} (seed {record.summary.seed})")
    for ax, (_, title) in zip(axes.flat, FIGURE_TAGS):
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("env steps")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--frames", type=int, default=PAPER_FRAMES, help="env steps per run (a multiple of 3200)")
    ap.add_argument("--eval-every", type=int, default=25_600, help="env steps between evaluations (a multiple of 3200)")
    ap.add_argument("--fix", default=None, help="a fix id as doctor names it (applied through BenchMARL's config)")
    ap.add_argument("--out", type=Path, default=Path("runs/benchmarl"))
    ap.add_argument("--overhead", action="store_true", help="alternate runs without and with the callback")
    ap.add_argument("--repeats", type=int, default=2, help="--overhead: rounds of (without, with) per seed")
    ap.add_argument("--table", type=Path, nargs="+", default=None, help="print a table of the runs under these folders")
    ap.add_argument("--figure", type=Path, default=None, help="with --table: also plot those runs to this PNG")
    args = ap.parse_args(argv)
    if args.table:
        print(table(args.table))
        if args.figure is not None:
            figure(args.table, args.figure)
        return
    for name, value in (("--frames", args.frames), ("--eval-every", args.eval_every)):
        if value <= 0 or value % 3200:
            print(f"error: {name} must be a positive multiple of 3200, got {value}", file=sys.stderr)
            sys.exit(2)
    if args.overhead:
        overhead(args.seeds, args.out, args.frames, args.eval_every, args.repeats)
        return
    for seed in args.seeds:
        try:
            row = run_one(seed, args.out / f"{args.fix or 'mappo'}_s{seed}", args.frames, args.eval_every, args.fix)
        except ValueError as e:  # an unknown fix, or one BenchMARL has no setting for
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
