"""``marl-stability cure RUN_DIR``: which fix saves *this* run, measured on it.

doctor ranks fixes by single-fix tables measured on simple_spread_v3; a run on another task, with another
algorithm or with its own settings may not follow them. ``cure`` measures instead: it takes the top ``K`` fixes
doctor ranks for the run (its diagnosed road first), and runs each on the run's own config -- plus a **control** arm,
the run's config unchanged -- for ``S`` fresh seeds and a short budget, on the local pool or Ray. Every trial is
labelled as ``calibrate`` labels runs (healthy, collapsed, diverged, degraded), and per fix the report gives the
counts, the final return with a 95% bootstrap CI, and a verdict:

- **cures this run**: every seed of the fix ended healthy, and the control failed in at least half of its seeds
  (the failure recurs in this budget, so the fix, not the seed, made the difference);
- **does not cure**: fewer than half of the fix's seeds ended healthy;
- **inconclusive**: anything else (including a control that did not fail: nothing to cure in this budget).

The best curing fix (most healthy, then the highest mean return) is written as a preset, ``cured.yaml`` (the run's
config with that fix, its own budget). Where the run kept periodic checkpoints (``train.keep_checkpoints``), the
control and every fix a running run can take start from the last one before the failure's onset
(``train.start_from``: its networks, optimizers, normalizers and replay buffer; fresh random streams per seed); a fix
that changes the network (a normalization layer, a Beta policy) and every trial of a run without such a checkpoint
start from env step 0, and the report says which. The default budget, counted from step 0 as the run counted it, is
twice the onset (at least the onset plus 20k env steps and three evaluations, at most the run's own budget): long
enough for the failure to recur and for the labels to judge the return.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

from marl_stability.agents import algorithm_class
from marl_stability.analysis.doctor import diagnose
from marl_stability.atomic import atomic_write_json, atomic_write_text
from marl_stability.config import apply_override, dump_yaml, flatten, load_config
from marl_stability.core.checkpoint import history_checkpoints
from marl_stability.core.live import blockers
from marl_stability.core.returns import SMOOTH_EVALS
from marl_stability.core.roads import ON_POLICY
from marl_stability.errors import UserError
from marl_stability.fixes import registry
from marl_stability.fmt import fmt_number
from marl_stability.runs.record import RunRecord
from marl_stability.runs.trials import collect
from marl_stability.studies.report import _mean, bootstrap_ci
from marl_stability.studies.sweep import FINAL_STATUSES, SeedChoice, run_sweep

CONTROL = "control"
CURED_PRESET = "cured.yaml"
MIN_MARGIN = 20_000  # env steps after the onset, at least, in the default budget
NORMALIZERS = ("fixes.obs_norm.enabled=true", "fixes.reward.mode=normalize")  # settings that switch a normalizer on


def _override_dict(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", ...]`` -> ``{"a.b": 1}`` (values read as YAML, as ``--set`` reads them)."""
    nested: dict[str, Any] = {}
    for item in items:
        apply_override(nested, item)
    return flatten(nested)


def default_budget(onset: Optional[int], run_steps: int, eval_every: int) -> int:
    """Twice the onset, at least the onset plus :data:`MIN_MARGIN` and the evaluations the labels' trailing median
    reads (a trial judged on one or two evaluations says little), at most the run's budget, in whole evaluations."""
    if onset is None:
        return run_steps
    steps = min(run_steps, max(2 * onset, onset + MIN_MARGIN, SMOOTH_EVALS * eval_every))
    return min(run_steps, int(math.ceil(steps / eval_every)) * eval_every)


def start_point(run_dir: Path, onset: Optional[int]) -> Optional[tuple[int, Path]]:
    """The run's last kept periodic checkpoint strictly before ``onset`` (at the onset the failure is already
    there); None without an onset or such a checkpoint."""
    if onset is None:
        return None
    return max(((step, path) for step, path in history_checkpoints(run_dir) if step < onset), default=None)


def _live(algo_cls: type, spec: Optional[registry.FixSpec], items: list[str]) -> bool:
    """A trial with this fix may start from a checkpoint: a running ``algo_cls`` can take it, and it does not switch a
    normalizer on (a run that kept no statistics for it would start it empty at the checkpoint, a handicap the same
    fix from step 0 does not have: such a fix starts from step 0)."""
    normalizer = any(i.replace(" ", "").startswith(NORMALIZERS) for i in items)
    return (spec is not None and spec.live is not None and not normalizer
            and not blockers(algo_cls, [i.split("=", 1)[0] for i in items]))


def plan_cure(run_dir: Path, top: int, steps: Optional[int]) -> dict[str, Any]:
    """Diagnose the run and build the sweep (control + the top fixes); returns what was planned: the diagnosis, the
    road (the off-policy mechanism or the on-policy road), the fixes with their overrides, the budget and the sweep
    file's text (the sweep keeps it as ``ablation.yaml``)."""
    record = RunRecord(run_dir)
    d = diagnose(run_dir)
    if record.config is None:
        raise UserError(f"{run_dir}: no config.yaml to rerun")
    outcome = d.get("outcome") or {}
    if d["verdict"] == "healthy":
        raise UserError(f"{run_dir}: doctor calls this run healthy; cure measures fixes for a run that failed")
    fixes = [f for f in d["fixes"] if f["set"]][:top]
    if not fixes:
        raise UserError(f"{run_dir}: doctor has no fix left to try for this run")
    cfg = load_config(run_dir / "config.yaml")
    onset = outcome.get("onset")
    for key in ("collapse_step", "explosion_step", "nonfinite_step", "entropy_collapse_step"):
        if onset is None and d.get(key) is not None:
            onset = d[key]
    budget = steps if steps is not None else default_budget(onset, cfg.train.steps, cfg.train.eval_every)
    if budget < 1:
        raise UserError("--steps must be >= 1")
    start = start_point(run_dir, onset)
    start_set = {"train.start_from": str(start[1].resolve())} if start is not None and start[0] < budget else {}
    algo_cls = algorithm_class(cfg.algo)
    arms: dict[str, Any] = {CONTROL: dict(start_set)}
    ids = []
    by_title = {spec.title: spec for spec in registry.FIXES}
    for f in fixes:
        spec = by_title.get(f["name"])
        arm = spec.id if spec is not None else f"fix{len(ids) + 1}"  # the registry id names the arm
        arms[arm] = {**_override_dict(f["set"]), **(start_set if _live(algo_cls, spec, f["set"]) else {})}
        ids.append((arm, {**f, "from_step": start[0] if "train.start_from" in arms[arm] else 0}))
    sweep = {"name": "cure", "description": f"cure {run_dir}: the control (the run's config) and the top {len(fixes)} fixes "
             "doctor ranks for it", "base": {"config": str((run_dir / "config.yaml").resolve()),
             "set": {"train.steps": budget, "train.heal.enabled": False, "train.keep_checkpoints": 0,
                     "train.start_from": None}},
             "design": "arms", "arms": arms, "reference": CONTROL}
    road = ON_POLICY if record.on_policy else (d.get("mechanism") or {}).get("mechanism")
    return {"diagnosis": d, "road": road, "fixes": ids, "budget": budget, "onset": onset, "config": cfg,
            "start": {"env_steps": start[0], "checkpoint": start_set["train.start_from"]} if start_set else None,
            "sweep": yaml.safe_dump(sweep, sort_keys=False)}


def _arm_stats(out: Path) -> dict[str, dict[str, Any]]:
    """Per arm: labels, final returns (None for a diverged run) and their mean with a 95% bootstrap CI."""
    trials = collect(out)
    arms: dict[str, dict[str, Any]] = {}
    for row in sorted(trials.rows, key=lambda r: (r["arm"], r["seed"])):
        a = arms.setdefault(row["arm"], {"seeds": [], "labels": [], "returns": []})
        if row["status"] not in FINAL_STATUSES:
            continue
        s = trials.summaries[row["run_dir"]]
        a["seeds"].append(int(row["seed"]))
        a["labels"].append(RunRecord(out / row["run_dir"]).label.label)
        a["returns"].append(None if s.status == "diverged" else s.final_return)
    for a in arms.values():
        finite = [r for r in a["returns"] if r is not None and math.isfinite(r)]
        a["mean"] = sum(finite) / len(finite) if finite else None
        a["ci"] = list(bootstrap_ci((finite,), _mean)) if len(finite) > 1 else [a["mean"], a["mean"]]
        a["n"], a["healthy"] = len(a["labels"]), a["labels"].count("healthy")
    return arms


def verdict(fix: dict[str, Any], control: dict[str, Any]) -> str:
    """See the module docstring."""
    n, cn = fix["n"], control["n"]
    control_failed = cn > 0 and (cn - control["healthy"]) / cn >= 0.5
    if n >= 2 and fix["healthy"] == n and control_failed:
        return "cures this run"
    if n and fix["healthy"] < n / 2:
        return "does not cure"
    return "inconclusive"


def run_cure(run_dir: Path, out: Path, top: int = 3, seeds: int = 3, steps: Optional[int] = None, workers: int = 1,
             backend: str = "local", address: Optional[str] = None, quiet: bool = False) -> dict[str, Any]:
    """Plan, run and report a cure sweep in ``out`` (``ablation.yaml``: the sweep, its runs, ``cure.md``, ``cure.json`` and,
    when a fix cured the run, ``cured.yaml``); returns the results. A second call with the same ``out`` continues it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"not a run directory: {run_dir}")
    if top < 1 or seeds < 1:
        raise UserError("--top and --seeds must be >= 1")
    planned = plan_cure(run_dir, top, steps)
    cfg = planned["config"]
    if (out / "index.json").is_file():  # continue an interrupted cure
        run_sweep(None, out, workers=workers, backend=backend, address=address, quiet=quiet, resume=True)
    else:
        choice = SeedChoice.parse(seeds, 1000 + 10 * int(cfg.seed), None)  # fresh seeds, not the run's own
        with tempfile.TemporaryDirectory() as tmp:
            sweep_file = Path(tmp) / "cure.yaml"
            sweep_file.write_text(planned["sweep"], encoding="utf-8")
            run_sweep(sweep_file, out, seeds=choice, workers=workers, backend=backend, address=address, quiet=quiet)
    stats = _arm_stats(out)
    control = stats.get(CONTROL, {"n": 0, "healthy": 0, "labels": [], "mean": None, "ci": [None, None], "seeds": []})
    rows = []
    for arm, f in planned["fixes"]:
        st = stats.get(arm, {"n": 0, "healthy": 0, "labels": [], "mean": None, "ci": [None, None], "seeds": []})
        rows.append({"arm": arm, "fix": f["name"], "set": f["set"], "from_step": f["from_step"], **st,
                     "verdict": verdict(st, control)})
    cured = [r for r in rows if r["verdict"] == "cures this run"]
    best = max(cured, key=lambda r: (r["healthy"] / r["n"], r["mean"] if r["mean"] is not None else -math.inf),
               default=None)
    if best is not None:
        preset = load_config(run_dir / "config.yaml", [*best["set"], "train.start_from=null"])
        atomic_write_text(out / CURED_PRESET, f"# {run_dir}'s config with the fix `marl-stability cure` measured to cure "
                          f"it: {best['fix']}\n" + dump_yaml(preset))
    result = {"run": str(run_dir), "budget": planned["budget"], "onset": planned["onset"], "start": planned["start"],
              "control": control,
              "fixes": rows, "cured_by": best["fix"] if best else None,
              "mechanism": planned["road"]}
    atomic_write_text(out / "cure.md", render(result))
    atomic_write_json(out / "cure.json", result)
    return result


def _start_text(start: Optional[dict[str, Any]]) -> str:
    if not start:
        return ("Every trial starts from env step 0 (the run kept no checkpoint from before its onset: "
                "`train.keep_checkpoints` keeps them).")
    return (f"The control and each fix a running run can take start from the run's checkpoint at env step "
            f"{start['env_steps']:,} (`{start['checkpoint']}`); a fix that changes the network starts from step 0.")


def render(r: dict[str, Any]) -> str:
    def ret(a: dict[str, Any]) -> str:
        lo, hi = a.get("ci") or [None, None]
        return f"{fmt_number(a.get('mean'), '.1f')} [{fmt_number(lo, '.1f')}, {fmt_number(hi, '.1f')}]"

    def counts(a: dict[str, Any]) -> str:
        labels = a.get("labels") or []
        return ", ".join(f"{labels.count(k)} {k}" for k in ("healthy", "collapsed", "diverged", "degraded") if labels.count(k))

    c = r["control"]
    lines = [f"# cure: {r['run']}", "",
             f"Diagnosed road: {r['mechanism'] or 'n/a'}; failure onset: env step {r['onset'] if r['onset'] is not None else 'n/a'}. "
             f"{_start_text(r.get('start'))} Every trial runs to env step {r['budget']:,}, seeds "
             f"{', '.join(map(str, c.get('seeds') or [])) or 'n/a'} (fresh, not the run's).", "",
             "| arm | fix (`--set`) | starts at env step | seeds | outcome | final team return, mean [95% CI] | verdict |",
             "|---|---|---|---|---|---|---|",
             f"| control | the run's config | {(r.get('start') or {}).get('env_steps', 0):,} | {c['n']} | {counts(c) or '-'} | "
             f"{ret(c)} | — |"]
    for row in r["fixes"]:
        sets = " ".join(f"`{s}`" for s in row["set"])
        lines.append(f"| {row['arm']} | {row['fix']}: {sets} | {row.get('from_step', 0):,} | {row['n']} | "
                     f"{counts(row) or '-'} | {ret(row)} | **{row['verdict']}** |")
    lines += ["", "Verdicts: *cures this run* — every seed of the fix ended healthy and the control failed in at least "
              "half of its seeds; *does not cure* — fewer than half ended healthy; *inconclusive* — anything else.", ""]
    lines.append(f"Cured by: **{r['cured_by']}** (preset: `{CURED_PRESET}`)." if r["cured_by"] else
                 "No fix cured this run on this evidence; no preset written.")
    return "\n".join(lines) + "\n"
