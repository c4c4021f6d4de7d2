"""``report.md`` of ``marl-stability calibrate``: label counts, the per-signal table, the existing detectors and a
plain-language verdict. Built only from run records and scores, so ``--from-records`` gives the same text."""

from __future__ import annotations

import statistics
from typing import Optional

from marl_stability.analysis.calibrate_eval import Row, Score
from marl_stability.fmt import MISSING, fmt_number
from marl_stability.runs.labelled import ANY_DETECTOR, DETECTORS, LabelledRun
from marl_stability.runs.labels import LABELS
from marl_stability.runs.signals import signal


def seeds_text(seeds: list[int]) -> str:
    """[0, 1, 2, 3, 4, 7] -> "0-4,7"."""
    runs: list[list[int]] = []
    for s in sorted(set(seeds)):
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _frac(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.2f})" if n else MISSING


def _lead(x: Optional[float]) -> str:
    return MISSING if x is None else f"{x:+,.0f}"


def _theta(row: Row) -> str:
    if row.threshold is None:
        return MISSING
    arrow = ">=" if row.direction == "up" else "<="
    return f"{arrow} {fmt_number(row.threshold, '.4g')}" + (" (flagged)" if row.flagged else "")


def _cal(s: Optional[Score]) -> str:
    if s is None or s.n_failing + s.n_healthy == 0:
        return MISSING
    return f"recall {fmt_number(s.recall, '.2f')}, false alarms {s.alarmed_healthy}/{s.n_healthy}"


def _held(s: Optional[Score]) -> list[str]:
    if s is None or s.n_failing + s.n_healthy == 0:
        return [MISSING] * 5
    return [f"{s.n_failing} / {s.n_healthy}", fmt_number(s.precision, ".2f"), _frac(s.alarmed_failing, s.n_failing),
            _frac(s.alarmed_healthy, s.n_healthy), _lead(s.median_lead)]


# ---------------------------------------------------------------------------------------------- tables
def label_table(records: list[LabelledRun], split_of: dict[int, str]) -> list[str]:
    lines = ["| group | config | split | runs | healthy | collapsed | diverged | degraded | kinds (failing) | "
             "onset, median env step (failing) |", "|---|---|---|---|---|---|---|---|---|---|"]
    keyed: dict[tuple[str, str, str], list[LabelledRun]] = {}
    for r in sorted(records, key=lambda r: (r.group, r.group_key, r.seed)):
        keyed.setdefault((r.group, r.group_key, split_of[r.seed]), []).append(r)
    for (group, key, split), runs in sorted(keyed.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "calibration")):
        counts = [sum(r.label == lab for r in runs) for lab in LABELS]
        onsets = [r.onset for r in runs if r.failing and r.onset is not None]
        onset = f"{statistics.median(onsets):,.0f}" if onsets else MISSING
        kinds = sorted({r.kind for r in runs if r.failing and r.kind})
        kind_text = ", ".join(f"{k.replace('_', ' ')} {sum(r.kind == k for r in runs)}" for k in kinds) or MISSING
        lines.append(f"| {group} | `{key[:8]}` | {split} | {len(runs)} | " + " | ".join(map(str, counts))
                     + f" | {kind_text} | {onset} |")
    return lines


def signal_table(rows: list[Row], given: bool = False) -> list[str]:
    source = "given" if given else "from calibration"
    lines = [f"| signal | threshold θ ({source}) | calibration | held-out failing / healthy | precision | "
             "recall | false alarms | median lead (env steps) | note |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        s = signal(row.name)
        lines.append(f"| `{row.name}` ({s.unit}) | {_theta(row)} | {_cal(row.calibration)} | "
                     + " | ".join(_held(row.held_out)) + f" | {row.note} |")
    return lines


def detector_table(rows: list[Row]) -> list[str]:
    lines = ["| detector | summary.json field | calibration | held-out failing / healthy | precision | recall | "
             "false alarms | median lead (env steps) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        field = DETECTORS[row.name][0] if row.name in DETECTORS else "earliest of the above"
        lines.append(f"| {row.name} | `{field}` | {_cal(row.calibration)} | " + " | ".join(_held(row.held_out)) + " |")
    return lines


# ---------------------------------------------------------------------------------------------- verdict
def _scored(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.held_out is not None and r.held_out.recall is not None]


def _describe(row: Row) -> str:
    h = row.held_out
    assert h is not None
    lead = h.median_lead
    if lead is None:
        when = ""
    elif lead == 0:
        when = ", at the onset (median)"
    else:
        when = f", median {abs(lead):,.0f} env steps " + ("before" if lead > 0 else "after") + " the onset"
    return (f"warned in {h.alarmed_failing} of {h.n_failing} failing runs{when}, and in {h.alarmed_healthy} of "
            f"{h.n_healthy} healthy runs")


def _best(scored: list[Row]) -> tuple[Row, bool]:
    """The first row (table order) without a false alarm on either split, else the first row; and whether it is
    clean."""
    clean = [r for r in scored if not r.flagged and r.held_out is not None and not r.held_out.alarmed_healthy]
    return (clean[0], True) if clean else (scored[0], False)


def verdict(sig_rows: list[Row], det_rows: list[Row]) -> str:
    """The plain-language paragraph: the best signal, how it compares with the detectors, caveats."""
    scored = _scored(sig_rows)
    if not scored:
        return "No signal could be scored on the held-out seeds (none had a threshold and held-out runs that log it)."
    best, clean = _best(scored)
    s = signal(best.name)
    arrow = "reaches" if best.direction == "up" else "falls to"
    text = [] if clean else ["No signal kept zero false alarms on both splits; the one with the highest held-out recall:"]
    text.append(f"The best signal on the held-out seeds is **{best.name}** ({s.description}): alarming when it {arrow} "
                f"{fmt_number(best.threshold, '.4g')} {s.unit}, it {_describe(best)}.")
    if best.flagged:
        text.append("Its threshold is flagged: no threshold had zero false alarms on the calibration seeds.")
    elif not clean:
        text.append("It had no false alarm on the calibration seeds but some on the held-out ones: the threshold "
                    "does not transfer cleanly.")
    dets = [r for r in _scored(det_rows) if r.name != ANY_DETECTOR]
    if dets:
        ranks = "ranks above it" if best.sort_key() < dets[0].sort_key() else "does not rank above it"
        text.append(f"The best existing detector, **{dets[0].name}**, {_describe(dets[0])}; the signal {ranks} "
                    "(held-out recall, then false alarms, then lead; the two may cover different runs).")
    combined = [r for r in _scored(det_rows) if r.name == ANY_DETECTOR]
    if combined:
        text.append(f"All detectors together (the earliest to fire) {_describe(combined[0])}.")
    h = best.held_out
    assert h is not None
    text.append(f"With {h.n_failing} failing and {h.n_healthy} healthy held-out runs, one run moves the recall by "
                f"{1 / max(h.n_failing, 1):.2f}: read small differences between rows as ties.")
    absent = [r.name for r in sig_rows if r.threshold is None]
    if absent:
        text.append("No threshold (not logged, no defined value, or no failing or no healthy calibration run "
                    "logs it): " + ", ".join(f"`{n}`" for n in absent) + ".")
    return " ".join(text)
