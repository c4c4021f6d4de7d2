"""The heal tables of docs/heal.md from a finished `marl-stability ablate -c experiments/heal.yaml` sweep:

    python docs/results/heal/tabulate.py runs/heal > docs/results/heal/tables.md
    python docs/results/heal/tabulate.py runs/heal runs/heal_mappo > ...   # a later sweep's arms replace same-named ones

Per arm: runs healed, labels at the end (runs.labels, as calibrate labels runs), final team return (mean, 95%
bootstrap CI), the fixes heal applied, env steps lost, and for the fixed presets whether each run's final return
equals the same seed's run without heal (docs/results/reproduce*/summary.json, seeds 0-9)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from marl_stability.runs.record import RunRecord
from marl_stability.runs.trials import collect
from marl_stability.studies.report import _mean, bootstrap_ci, wilson_interval

ROOT = Path(__file__).resolve().parents[3]
WITHOUT_HEAL = {"saturation_fixed": ("reproduce", "fixed"), "matd3_fixed": ("reproduce_matd3", "fixed"),
                "mappo_fixed": ("reproduce_mappo", "fixed"), "saturation": ("reproduce", "failure"),
                "matd3": ("reproduce_matd3", "failure"), "mappo": ("reproduce_mappo", "failure")}


def main(*sweeps: Path) -> None:
    arms: dict[str, list] = {}
    for sweep in sweeps:
        trials = collect(sweep)
        found: dict[str, list] = {}
        for row in sorted(trials.rows, key=lambda r: (r["arm"], r["seed"])):
            if row["status"] in ("completed", "diverged"):
                found.setdefault(row["arm"], []).append((int(row["seed"]), trials.summaries[row["run_dir"]],
                                                         RunRecord(sweep / row["run_dir"]).label.label))
        arms.update(found)
    arms = dict(sorted(arms.items()))
    print("| arm | runs | healed (a heal acted) | labels at the end | final team return, mean [95% CI] | without heal, same seeds | fixes applied | env steps lost per healed run | wall s, median |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, runs in arms.items():
        n = len(runs)
        healed = [s for _, s, _ in runs if any(h.get("fix") for h in s.healing)]
        labels = Counter(lab for _, _, lab in runs)
        rets = [s.final_return for _, s, _ in runs if s.status != "diverged" and s.final_return is not None]
        lo, hi = bootstrap_ci((rets,), _mean) if len(rets) > 1 else (None, None)
        fixes = Counter(h["fix"] for s in healed for h in s.healing if h.get("fix"))
        lost = sorted(sum(h["env_steps_lost"] for h in s.healing if h.get("fix")) for s in healed)
        ref = ""
        if arm in WITHOUT_HEAL:
            folder, ref_arm = WITHOUT_HEAL[arm]
            base = json.loads((ROOT / "docs" / "results" / folder / "summary.json").read_text())["arms"][ref_arm]
            by_seed = dict(zip(base["seeds"], base["final_returns"]))
            same = [by_seed.get(seed) == s.final_return for seed, s, _ in runs if seed in by_seed]
            vals = [v for v in (by_seed.get(seed) for seed, _, _ in runs) if v is not None]
            ref = (f"{sum(same)}/{len(same)} identical; " if not healed else "") + \
                  (f"mean {sum(vals) / len(vals):.1f}" if vals else "diverged in every seed")
        hl, hh = wilson_interval(labels.get("healthy", 0), n)
        walls = sorted(s.wall_seconds for _, s, _ in runs)
        print(f"| {arm} | {n} | {len(healed)}/{n} | {labels.get('healthy', 0)}/{n} healthy [{hl:.2f}, {hh:.2f}]"
              + "".join(f", {v} {k}" for k, v in labels.items() if k != "healthy")
              + f" | {(sum(rets) / len(rets)) if rets else float('nan'):.1f} [{lo if lo is None else round(lo, 1)}, "
                f"{hi if hi is None else round(hi, 1)}] | {ref or '—'} | "
              + (", ".join(f"{k} ×{v}" for k, v in fixes.most_common()) or "—")
              + f" | {(f'{lost[0]:,} – {lost[-1]:,} (median {lost[len(lost) // 2]:,})' if lost else '—')} | "
                f"{walls[len(walls) // 2]:.0f} |")
    print()
    print("Per run: seed: heals (trigger at env step -> rolled back to, fix, outcome); label; final return")
    for arm, runs in arms.items():
        print(f"\n**{arm}**\n")
        for seed, s, lab in runs:
            hs = "; ".join(f"{h['trigger']} at {h['alarm_step']} -> {h.get('rolled_back_to', '-')}, {h.get('fix') or 'no fix'}, "
                           f"{h['outcome']}" for h in s.healing) or "no heal"
            print(f"- {seed}: {hs}; {lab}; {s.final_return if s.final_return is None else round(s.final_return, 1)}")


if __name__ == "__main__":
    main(*(Path(p) for p in sys.argv[1:]))
