"""Tables, statistics and figures of a finished (or partly finished) ablation sweep.

Everything is read back from the sweep directory (``arms.json``, ``index.json`` and each run's
``summary.json``), so ``marl-stability report DIR`` rebuilds the same files at any time. Failed or missing
trials are listed, never fatal.

Statistics follow Agarwal et al. (2021, "Deep RL at the edge of the statistical precipice", the rliable
recipe): interquartile mean (IQM) of the final team return with a 95% percentile bootstrap interval, the
bootstrap resampling seeds within each arm (stratified by arm: this is a single-task comparison), and the
probability of improvement P(X_arm > X_ref). The bootstrap is ``scipy.stats.bootstrap`` with a fixed seed,
so a report is reproducible byte for byte.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from marl_stability.atomic import atomic_write_bytes, atomic_write_text
from marl_stability.core.tb_run import OUTLIER_NOTE, tensorboard_link
from marl_stability.runs.trials import first_agent
from marl_stability.fmt import fmt_number
from marl_stability.runs.sweep_layout import (
    FINAL_STATUSES,
)
from marl_stability.core.rates import rate_text, wilson_interval
from marl_stability.runs.trials import Trials, collect, fix_engagement_section, write_csv

CONFIDENCE = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: rebuilding a report gives the same intervals



# ---------------------------------------------------------------------------------------------- statistics
def iqm(x: Any, axis: int = -1) -> Any:
    """Interquartile mean: the mean of the middle 50% (25% trimmed from each end, as rliable)."""
    from scipy.stats import trim_mean

    return trim_mean(np.asarray(x, dtype=float), 0.25, axis=axis)


def prob_improvement(x: Any, y: Any, axis: int = -1) -> Any:
    """P(X > Y) over all pairs, ties counting one half (the Mann-Whitney U statistic divided by n*m).

    Vectorized over leading axes so ``scipy.stats.bootstrap`` can evaluate many resamples at once.
    """
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    y = np.moveaxis(np.asarray(y, dtype=float), axis, -1)
    gt = x[..., :, None] > y[..., None, :]
    eq = x[..., :, None] == y[..., None, :]
    return (gt + 0.5 * eq).mean(axis=(-2, -1))


def _bootstrap_kwargs() -> dict[str, Any]:
    # scipy >= 1.15 takes `rng`; older versions `random_state` (same meaning for a Generator).
    from scipy.stats import bootstrap

    key = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
    return {key: np.random.default_rng(BOOTSTRAP_SEED)}


def bootstrap_ci(samples: tuple[Any, ...], statistic: Callable[..., Any], n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """95% percentile bootstrap CI of ``statistic(*samples, axis)``, each sample resampled independently.

    (nan, nan) when a sample has fewer than two values: no interval can be estimated from one seed.
    Percentile, not BCa: BCa's jackknife is undefined on the tied values a few seeds often produce.
    """
    from scipy.stats import bootstrap

    arrays = [np.asarray(s, dtype=float) for s in samples]
    if any(a.size < 2 for a in arrays):
        return (math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (all-equal) resamples are fine for percentile intervals
        res = bootstrap(tuple(arrays), statistic, n_resamples=n_resamples, confidence_level=CONFIDENCE,
                        method="percentile", vectorized=True, paired=False, axis=-1, **_bootstrap_kwargs())
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (lo, hi)


def _iqm_diff(x: Any, y: Any, axis: int = -1) -> Any:
    return iqm(x, axis=axis) - iqm(y, axis=axis)


def _mean(x: Any, axis: int = -1) -> Any:
    return np.mean(x, axis=axis)


# ---------------------------------------------------------------------------------------------- per-arm stats
@dataclass
class ArmStats:
    arm: str
    levels: dict[str, str]
    planned: int
    finished: int
    failed: int
    missing: int
    returns: list[float]
    iqm: float
    iqm_ci: tuple[float, float]
    collapses: int
    explosions: int
    diverged: int
    collapse_ci: tuple[float, float]
    explosion_ci: tuple[float, float]
    p_improve: float = math.nan
    p_improve_ci: tuple[float, float] = (math.nan, math.nan)
    diff: float = math.nan
    diff_ci: tuple[float, float] = (math.nan, math.nan)


def arm_stats(trials: Trials) -> list[ArmStats]:
    """IQM + CI, failure rates + Wilson intervals, and comparisons with the reference arm, per arm."""
    out: list[ArmStats] = []
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in trials.rows:
        by_arm.setdefault(r["arm"], []).append(r)
    for arm in trials.plan.arms:
        rows = by_arm.get(arm.name, [])
        fin = [r for r in rows if r["status"] in FINAL_STATUSES]
        # A diverged run keeps its last evaluation's return; one that never evaluated has none and is left out.
        rets = [r["final_return"] for r in fin if r["final_return"] is not None and math.isfinite(r["final_return"])]
        k_col = sum(r["collapse_step"] is not None for r in fin)
        k_exp = sum(r["explosion_step"] is not None for r in fin)
        out.append(ArmStats(
            arm=arm.name, levels=dict(arm.levels), planned=len(rows), finished=len(fin),
            failed=sum(r["status"] == "failed" for r in rows), missing=sum(r["status"] == "missing" for r in rows),
            returns=rets, iqm=float(iqm(rets)) if rets else math.nan,
            iqm_ci=bootstrap_ci((rets,), iqm), collapses=k_col, explosions=k_exp,
            diverged=sum(r["status"] == "diverged" for r in fin),
            collapse_ci=wilson_interval(k_col, len(fin)), explosion_ci=wilson_interval(k_exp, len(fin)),
        ))
    ref = next((s for s in out if s.arm == trials.plan.reference), None)
    if ref is not None and ref.returns:
        for s in out:
            if s.arm == ref.arm or not s.returns:
                continue
            s.p_improve = float(prob_improvement(s.returns, ref.returns))
            s.p_improve_ci = bootstrap_ci((s.returns, ref.returns), prob_improvement)
            s.diff = s.iqm - ref.iqm
            s.diff_ci = bootstrap_ci((s.returns, ref.returns), _iqm_diff)
    return out


def effect_sentence(s: ArmStats, ref: ArmStats) -> str:
    """One honest sentence: is this arm's effect on final return distinguishable from zero at this n?"""
    n = f"n = {len(s.returns)} vs {len(ref.returns)} seeds"
    if len(s.returns) < 2 or len(ref.returns) < 2:
        return f"`{s.arm}` vs `{ref.arm}`: cannot be assessed ({n}; a bootstrap interval needs at least 2 seeds per arm)."
    lo, hi = s.diff_ci
    diff = f"IQM difference {s.diff:+.2f}, 95% CI [{lo:+.2f}, {hi:+.2f}]"
    pi = f"P(improvement) = {s.p_improve:.2f} [{s.p_improve_ci[0]:.2f}, {s.p_improve_ci[1]:.2f}]"
    if lo > 0 or hi < 0:
        direction = "higher" if lo > 0 else "lower"
        return (f"`{s.arm}` vs `{ref.arm}`: final return is {direction} and the difference is distinguishable "
                f"from zero at {n} ({diff}; {pi}).")
    return (f"`{s.arm}` vs `{ref.arm}`: the effect on final return is not distinguishable from zero at {n} "
            f"({diff} includes 0; {pi}).")


# ---------------------------------------------------------------------------------------------- markdown
def _ci(ci: tuple[float, float], spec: str = ".2f") -> str:
    return "n/a" if not all(math.isfinite(c) for c in ci) else f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def render_markdown(trials: Trials, stats: list[ArmStats], figures: list[str], figure_note: str = "") -> str:
    plan = trials.plan
    counts = {k: sum(r["status"] == k for r in trials.rows) for k in ("completed", "diverged", "failed", "missing")}
    lines = [f"# Ablation `{plan.name}`", ""]
    if plan.description:
        lines += [plan.description, ""]
    factors = ", ".join(f"`{f}`" for f in plan.factors) or "none"
    lines += [
        f"Design **{plan.design}** over factors {factors} on `{plan.base_config}`; reference arm `{plan.reference}`; "
        f"seeds {plan.seeds}.",
        f"Trials: {len(trials.rows)} ({counts['completed']} completed, {counts['diverged']} diverged, "
        f"{counts['failed']} failed, {counts['missing']} missing).",
        "",
    ]
    lines += _arms_table(plan.reference, stats)
    lines += _effects_section(plan.reference, stats)
    lines += _unfinished_section(trials.rows)
    lines += fix_engagement_section(trials)
    lines += ["", "## Figures", ""]
    if figures:
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    if figure_note:
        lines.append(figure_note)
    lines += _method_section(trials.out)
    return "\n".join(lines)


def _arms_table(reference: str, stats: list[ArmStats]) -> list[str]:
    """Final return (IQM, CI, P(improvement)) and failure rates, one row per arm."""
    lines = [
        "## Final team return and failure rates",
        "",
        f"| arm | n | IQM final return | 95% CI | P(arm > `{reference}`) | 95% CI | collapse | explosion | diverged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stats:
        p = "—" if s.arm == reference else fmt_number(s.p_improve)
        pci = "—" if s.arm == reference else _ci(s.p_improve_ci)
        lines.append(
            f"| `{s.arm}` | {len(s.returns)} | {fmt_number(s.iqm)} | {_ci(s.iqm_ci)} | {p} | {pci} | "
            f"{rate_text(s.collapses, s.finished)} | {rate_text(s.explosions, s.finished)} | "
            f"{s.diverged}/{s.finished} |"
        )
    return lines + [
        "",
        "n: finished trials with a final return. Collapse/explosion: trials where that detector fired, with a 95% "
        "Wilson interval.",
    ]


def _effects_section(reference: str, stats: list[ArmStats]) -> list[str]:
    """One sentence per arm on its effect against the reference, and how rough the intervals are."""
    lines = ["", f"## Effects vs `{reference}`", ""]
    ref = next((s for s in stats if s.arm == reference), None)
    if ref is None or not ref.returns:
        lines.append(f"No finished trial of the reference arm `{reference}`: no comparison is possible.")
        return lines
    for s in stats:
        if s.arm != ref.arm:
            lines.append("- " + (effect_sentence(s, ref) if s.returns else f"`{s.arm}`: no finished trial."))
    small = min([len(s.returns) for s in stats if s.returns] or [0])
    lines += ["", f"With {small} seed(s) in the smallest arm these intervals are rough: percentile bootstrap "
                  "intervals from few seeds are too narrow, so a difference that only just excludes zero is a "
                  "hint, not a finding. More seeds (`--resume --seeds N`) tighten them."]
    return lines


def _unfinished_section(rows: list[dict[str, Any]]) -> list[str]:
    bad = [r for r in rows if r["status"] in ("failed", "missing")]
    if not bad:
        return []
    lines = ["", "## Failed or missing trials", ""]
    for r in bad:
        why = f": {r['error']}" if r.get("error") else ""
        lines.append(f"- `{r['arm']}/seed_{r['seed']}` {r['status']}{why}")
    return lines


def _method_section(out: Path) -> list[str]:
    return [
        "",
        "## Method",
        "",
        "Final return: the team return of each trial's last evaluation (`summary.json`). IQM: mean of the middle 50% "
        f"of seeds (scipy `trim_mean(x, 0.25)`). Intervals: {int(CONFIDENCE * 100)}% percentile bootstrap, "
        f"{N_RESAMPLES} resamples with a fixed seed, seeds resampled within each arm. P(improvement): mean over "
        "pairs of 1[x > y] + 0.5·1[x = y]. Per-trial numbers: `results.csv`. Compare arms in TensorBoard with "
        f"`python -m tensorboard.main --logdir {out / 'runs'}` (runs are named `<arm>/seed_<n>`; the HParams tab has "
        "`Arm`, `Seed`, the `Fixes` each run uses, every config key and the outcome metrics). [This link]"
        f"({tensorboard_link(first_agent(out / 'runs'))}) opens Time Series with one colour per arm and the story cards "
        "pinned. " + OUTLIER_NOTE,
        "",
    ]


# ---------------------------------------------------------------------------------------------- figures
def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend (safe inside notebooks and workers)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def _curve(histories: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean eval return per env step across seeds with a 95% bootstrap band (nan where fewer than 2 seeds)."""
    by_step: dict[int, list[float]] = {}
    for h in histories:
        for step, ret in h:
            by_step.setdefault(step, []).append(ret)
    steps = np.array(sorted(by_step))
    mean = np.array([np.mean(by_step[s]) for s in steps])
    cis = [bootstrap_ci((by_step[s],), _mean, n_resamples=1000) for s in steps]
    return steps, mean, np.array([c[0] for c in cis]), np.array([c[1] for c in cis])


def make_figures(trials: Trials, stats: list[ArmStats], folder: Path) -> list[str]:
    """learning_curves.png, final_return.png (forest plot), failure_rates.png; paths relative to the sweep dir."""
    colors = {s.arm: f"C{i % 10}" for i, s in enumerate(stats)}
    figures = {
        "learning_curves": _learning_curves_figure(trials, [s.arm for s in stats], colors),
        "final_return": _final_return_figure(trials.plan.reference, stats, colors),
        "failure_rates": _failure_rates_figure(stats),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        _save(fig, folder / f"{name}.png")
    return [f"figures/{name}.png" for name in figures]


def _learning_curves_figure(trials: Trials, names: list[str], colors: dict[str, str]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for arm in names:
        if not trials.curves.get(arm):
            continue
        steps, mean, lo, hi = _curve(trials.curves[arm])
        if not steps.size:
            continue
        ax.plot(steps, mean, color=colors[arm], label=f"{arm} (n={len(trials.curves[arm])})")
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(steps[ok], lo[ok], hi[ok], color=colors[arm], alpha=0.2, linewidth=0)
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval team return")
    ax.set_title("learning curves (mean across seeds, 95% bootstrap band)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _final_return_figure(reference: str, stats: list[ArmStats], colors: dict[str, str]) -> Any:
    """Forest plot: each arm's IQM with its CI, and every seed's final return as a dot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.5 * len(stats) + 1.5))
    ax = fig.add_subplot()
    ys = np.arange(len(stats))[::-1]
    for y, s in zip(ys, stats):
        if not math.isfinite(s.iqm):
            continue
        if all(math.isfinite(c) for c in s.iqm_ci):
            ax.plot(s.iqm_ci, [y, y], color=colors[s.arm], linewidth=2)
        ax.plot([s.iqm], [y], "o", color=colors[s.arm])
        ax.scatter(s.returns, [y] * len(s.returns), s=10, color="k", alpha=0.4, zorder=3)
    ref = next((s for s in stats if s.arm == reference), None)
    if ref is not None and math.isfinite(ref.iqm):
        ax.axvline(ref.iqm, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{s.arm} (n={len(s.returns)})" for s in stats])
    ax.set_xlabel("final eval team return: IQM and 95% bootstrap CI (dots: seeds)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _failure_rates_figure(stats: list[ArmStats]) -> Any:
    from matplotlib.figure import Figure

    names = [s.arm for s in stats]
    fig = Figure(figsize=(max(5, 0.9 * len(names) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    width = 0.38
    for offset, label, get in ((-width / 2, "collapse", lambda s: (s.collapses, s.collapse_ci)),
                               (width / 2, "explosion", lambda s: (s.explosions, s.explosion_ci))):
        rates, lows, highs = [], [], []
        for s in stats:
            k, (lo, hi) = get(s)
            r = k / s.finished if s.finished else math.nan
            rates.append(r)
            lows.append(max(0.0, r - lo) if s.finished else 0.0)
            highs.append(max(0.0, hi - r) if s.finished else 0.0)
        ax.bar(x + offset, np.nan_to_num(rates), width, yerr=[lows, highs], capsize=3, label=label,
               color="C3" if label == "collapse" else "C1", alpha=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of finished trials")
    ax.set_title("collapse and explosion rates (95% Wilson intervals)")
    ax.legend()
    return fig


# ---------------------------------------------------------------------------------------------- entry point
def build_report(out: str | Path) -> dict[str, Any]:
    """(Re)build results.csv, report.md and figures/ in the sweep directory ``out``; returns what it wrote."""
    out = Path(out)
    trials = collect(out)
    write_csv(trials, out / "results.csv")
    stats = arm_stats(trials)
    note = ""
    try:
        figures = make_figures(trials, stats, out / "figures")
    except ImportError:
        figures, note = [], "Figures skipped: matplotlib is not installed."
    text = render_markdown(trials, stats, figures, note)
    atomic_write_text(out / "report.md", text)
    return {
        "csv": out / "results.csv",
        "markdown": out / "report.md",
        "figures": [out / f for f in figures],
        "missing": [f"{r['arm']}/seed_{r['seed']}" for r in trials.rows if r["status"] in ("failed", "missing")],
        "stats": stats,
    }
