"""Detector calibration with held-out seeds: ``marl-stability calibrate DIR... [--out OUTDIR]``.

Reads finished run directories (each DIR is a run, or any folder holding runs at any depth, e.g. a sweep's
``<sweep>/runs/<arm>/seed_<k>/``), labels every run from its evaluations, computes each candidate signal of
``marl_stability.runs.signals.SIGNALS``, chooses each signal's threshold on the calibration seeds
(default 0-4) and reports precision, recall, false alarms on healthy runs and lead time on the held-out
seeds (default 5-9), beside the project's own detectors as they fired during training.

Labels (from the runs' evaluations and non-finite records, never from the detectors):

- **diverged**: the run ended with status ``diverged`` (it stopped on non-finite values), or it recorded a
  non-finite step (summary ``nonfinite_step``, e.g. a run that rolled back and went on). Onset: that first
  non-finite step (a diverged run without one: its last env step; the record's ``onset_note`` says so).
- **collapsed**: not diverged, and at the final evaluation (summary ``action_stats``) some agent's policy is
  constant: the collapse detector's repeat and sensitivity thresholds from the run's ``config.yaml``
  (``repeat_rate >= repeat_threshold``, ``sensitivity <= sensitivity_threshold``) AND ``batch_same_action >= 0.9``
  (``runs.labels.is_collapsed``; saturation is its kind, ``saturated`` when every collapsed agent's saturation
  >= ``saturation_threshold``, else ``unsaturated``). Onset: for each collapsed agent, the first evaluation from
  which its logged ``eval/repeat_rate|sensitivity|batch_same_action/<agent>`` meet the same criterion at every
  later evaluation; the run's onset is the earliest over its collapsed agents. Runs without
  ``eval/batch_same_action`` tags use the detector thresholds alone for the onset (noted); runs whose tags do not
  show the end state get the final evaluation's step (noted).
- **degraded** (not learning): neither, and the median of the last 3 evaluations is no better than the task's
  do-nothing team return (kind ``below_do_nothing``; ``runs.anchors``; not for tasks with opposing teams), or it
  lies more than ``runs.labels.DROP_Z`` x the run's evaluation noise below its best such median (kind
  ``dropped``). Onset: the first evaluation from which the trailing median stays below the anchor (or the margin)
  to the end.
- **healthy**: none of these. A **failing** run is diverged, collapsed or degraded.

Only runs whose summary has status ``completed`` or ``diverged`` are used; others (running, interrupted,
env_error, crashed, no summary.json, no event file, unreadable config.yaml) are skipped with a one-line note.
A run's seed is its summary ``seed``; runs whose seed is in neither set are ignored (and counted). Its group is
its resolved config without ``seed`` (a hash, with a readable name: the sweep arm, else the run folder's name
without ``_s<k>``/``seed_<k>``).

Signals are read from the run's first gradient update on (the first step of a ``grad_norm/`` tag): an evaluation
during the warm-up measures untrained networks. A signal whose tags a run never logged is n/a there (not zero).

Threshold rule, per signal, on the calibration runs that log it: the alarm step of a run at θ is the first
logged step where the signal reaches θ in its direction; candidates are the values the signal takes there
(the points where some run's alarm step changes; thinned to quantiles beyond 400). The chosen θ alarms in the
most failing runs with ZERO false alarms on healthy runs; ties -> the longer median lead time, then the more
conservative θ; the θ reported is then moved to the middle of the gap between that value and the largest value
any calibration run takes below it (same calibration outcome, widest margin; geometric middle for positive
values). When no θ has zero false alarms: fewest false alarms, then most failing runs alarmed, and the
row is flagged. On the held-out runs: precision (alarmed failing / all alarmed runs), recall (failing runs
alarmed), false alarms on healthy runs (count and rate) and the median lead time in env steps (onset - alarm
step; negative = late) over the alarmed failing runs. A detector counts where it was fed (e.g. entropy and KL
only in on-policy runs, the collapse detector only in runs with an evaluation); "any" is the earliest of them.

Outputs in ``--out``: ``report.md``, ``records.json`` (every run's label, onset, each signal's series summary and
running-extreme points, each detector's step: ``--from-records`` re-renders from it) and ``thresholds.json``.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from marl_stability.analysis.calibrate_eval import (
    Row,
    detector_rows,
    evaluate,
    signal_rows,
)
from marl_stability.analysis.calibrate_report import (
    detector_table,
    label_table,
    seeds_text,
    signal_table,
    verdict,
)
from marl_stability.errors import UserError
from marl_stability.runs.labelled import LabelledRun, disambiguate, read_run
from marl_stability.runs.record import RunRecord, find_runs
from marl_stability.runs.signals import SIGNALS, SignalParams, Trace, signal

RECORDS_FORMAT = 1
DEFAULT_CALIBRATION_SEEDS = "0-4"
DEFAULT_HELD_OUT_SEEDS = "5-9"
OUTPUTS = ("report.md", "records.json", "thresholds.json")


def parse_seeds(text: str, option: str) -> list[int]:
    """``"0-4"``, ``"0,2,5-9"`` -> sorted seeds; malformed, reversed or empty -> UserError."""
    seeds: set[int] = set()
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None:
            raise UserError(f"{option} {text!r}: expected seeds like 0-4 or 0,2,5-9")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise UserError(f"{option} {text!r}: range {lo}-{hi} runs backwards")
        if hi - lo > 100_000:
            raise UserError(f"{option} {text!r}: range {lo}-{hi} is too long")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


@dataclass
class Corpus:
    """The labelled runs of one calibration, and what was left out."""

    records: list[LabelledRun]
    params: SignalParams
    calibration_seeds: list[int]
    held_out_seeds: list[int]
    skipped: list[str] = field(default_factory=list)  # "<run dir>: <reason>"
    ignored: int = 0  # runs whose seed is in neither set

    def split_of(self) -> dict[int, str]:
        return {**{s: "calibration" for s in self.calibration_seeds}, **{s: "held-out" for s in self.held_out_seeds}}

    def split(self, name: str) -> list[LabelledRun]:
        seeds = set(self.calibration_seeds if name == "calibration" else self.held_out_seeds)
        return [r for r in self.records if r.seed in seeds]


def _progress(items: list[RunRecord], quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(items, desc="calibrate: reading runs", unit="run", dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


def read_corpus(dirs: list[Path], calibration: list[int], held_out: list[int], params: SignalParams,
                quiet: bool = False) -> Corpus:
    """Label every usable run under ``dirs`` whose seed is in one of the sets."""
    runs = find_runs(dirs)
    if not runs:
        raise UserError("no run directories (config.yaml with summary.json or an event file) in "
                        + ", ".join(map(str, dirs)))
    corpus = Corpus([], params, calibration, held_out)
    wanted = set(calibration) | set(held_out)
    for run in _progress(runs, quiet):
        reason = run.skip_reason()
        if reason is not None:
            corpus.skipped.append(f"{run.dir}: {reason}")
            continue
        assert run.summary is not None
        if run.summary.seed not in wanted:
            corpus.ignored += 1
            continue
        corpus.records.append(read_run(run, params))
    if not corpus.records:
        raise UserError(f"no finished run with a seed in {seeds_text(calibration)} or {seeds_text(held_out)} in "
                        + ", ".join(map(str, dirs)) + f" ({len(corpus.skipped)} skipped, {corpus.ignored} ignored)")
    disambiguate(corpus.records)
    return corpus


# ---------------------------------------------------------------------------------------------- records
def records_json(corpus: Corpus) -> dict[str, Any]:
    return {"format": RECORDS_FORMAT, "params": asdict(corpus.params),
            "calibration_seeds": corpus.calibration_seeds, "held_out_seeds": corpus.held_out_seeds,
            "ignored": corpus.ignored, "skipped": corpus.skipped, "records": [asdict(r) for r in corpus.records]}


def _record(data: dict[str, Any]) -> LabelledRun:
    signals = {k: (None if v is None else Trace(**v)) for k, v in data.pop("signals").items()}
    return LabelledRun(**data, signals=signals)


def read_records(path: Path) -> Corpus:
    """A ``records.json`` written by ``calibrate`` (UserError if it is not one)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != RECORDS_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {RECORDS_FORMAT}")
        return Corpus([_record(dict(r)) for r in data["records"]], SignalParams(**data["params"]),
                      [int(s) for s in data["calibration_seeds"]], [int(s) for s in data["held_out_seeds"]],
                      [str(s) for s in data["skipped"]], int(data["ignored"]))
    except FileNotFoundError:
        raise UserError(f"--from-records {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"--from-records {path}: not a calibration records file ({e})") from None


def resplit(corpus: Corpus, calibration: Optional[list[int]], held_out: Optional[list[int]]) -> Corpus:
    """The records' own seed sets, or new ones (runs outside the new sets count as ignored)."""
    cal = calibration if calibration is not None else corpus.calibration_seeds
    held = held_out if held_out is not None else corpus.held_out_seeds
    check_disjoint(cal, held)
    keep = [r for r in corpus.records if r.seed in set(cal) | set(held)]
    return Corpus(keep, corpus.params, cal, held, corpus.skipped, corpus.ignored + len(corpus.records) - len(keep))


def check_disjoint(calibration: list[int], held_out: list[int]) -> None:
    both = sorted(set(calibration) & set(held_out))
    if both:
        raise UserError(f"--calibration-seeds and --held-out-seeds overlap: seed {seeds_text(both)} in both")


def check_splits(corpus: Corpus) -> None:
    """The calibration split needs failing and healthy runs; the held-out split needs runs."""
    cal = corpus.split("calibration")
    text = seeds_text(corpus.calibration_seeds)
    if not any(r.failing for r in cal):
        raise UserError(f"no failing (diverged or collapsed) run among the calibration seeds {text} "
                        f"({len(cal)} runs): nothing to calibrate a warning on")
    if all(r.failing for r in cal):
        raise UserError(f"no healthy run among the calibration seeds {text} ({len(cal)} runs): false alarms "
                        "cannot be measured")
    if not corpus.split("held-out"):
        raise UserError(f"no run with a held-out seed ({seeds_text(corpus.held_out_seeds)})")


# ---------------------------------------------------------------------------------------------- outputs
@dataclass
class Result:
    corpus: Corpus
    signals: list[Row]
    detectors: list[Row]
    report: str
    scored: list[Row] = field(default_factory=list)  # --score SIGNAL=THETA: given thresholds, scored on both splits


def parse_scores(pairs: Optional[list[str]]) -> list[tuple[str, float]]:
    """``--score SIGNAL=THETA`` options as (signal, θ) pairs (UserError on an unknown signal or a non-number)."""
    from marl_stability.runs.signals import SIGNAL_NAMES

    out: list[tuple[str, float]] = []
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or name not in SIGNAL_NAMES:
            raise UserError(f"--score expects SIGNAL=THETA with SIGNAL one of {', '.join(SIGNAL_NAMES)}; got {pair!r}")
        try:
            theta = float(value)
        except ValueError:
            raise UserError(f"--score {pair}: {value!r} is not a number") from None
        if not math.isfinite(theta):
            raise UserError(f"--score {pair}: the threshold must be finite")
        out.append((name, theta))
    return out


def analyse(corpus: Corpus, scores: Optional[list[tuple[str, float]]] = None) -> Result:
    check_splits(corpus)
    cal, held = corpus.split("calibration"), corpus.split("held-out")
    sig, det = signal_rows(cal, held), detector_rows(cal, held)
    scored = [Row(name, "scored", signal(name).direction, theta, calibration=evaluate(cal, name, theta),
                  held_out=evaluate(held, name, theta)) for name, theta in scores or []]
    return Result(corpus, sig, det, render(corpus, sig, det, scored), scored)


def render(corpus: Corpus, sig: list[Row], det: list[Row], scored: Optional[list[Row]] = None) -> str:
    p = corpus.params
    lines = ["# Detector calibration", "",
             "Generated by `marl-stability calibrate` (definitions: the docstring of `marl_stability/analysis/calibrate.py`). "
             f"Thresholds chosen on seeds {seeds_text(corpus.calibration_seeds)}, scored on held-out seeds "
             f"{seeds_text(corpus.held_out_seeds)}. {len(corpus.records)} runs labelled, {corpus.ignored} ignored "
             f"(seed in neither set), {len(corpus.skipped)} skipped. Growth baseline: first {p.baseline_updates} "
             f"logged updates; rank baseline: first {p.baseline_measurements} measurements; log-slope window: "
             f"{p.slope_window} logged updates.", "", "## Labels", ""]
    lines += label_table(corpus.records, corpus.split_of())
    lines += ["", "## Signals: threshold from the calibration seeds, scores on the held-out seeds", "",
              "Sorted by held-out recall, then false alarms, then median lead. Lead = onset − alarm step (negative: "
              "the alarm came after the onset). \"flagged\": no threshold had zero false alarms on the calibration "
              "seeds. n/a: the signal's tags are absent from those runs (never counted as zero).", ""]
    lines += signal_table(sig)
    if scored:
        lines += ["", "## Thresholds given with --score, scored on both splits", "",
                  "Not chosen by the rule above: each signal at the threshold given on the command line (e.g. a "
                  "detector default), with the same scores on the calibration and the held-out seeds.", ""]
        lines += signal_table(scored, given=True)
    lines += ["", "## Existing detectors as they fired during training", ""]
    lines += detector_table(det)
    lines += ["", "## Verdict", "", verdict(sig, det)]
    notes = [f"- {r.run_dir}: {r.onset_note}" for r in corpus.records if r.onset_note]
    if notes:
        lines += ["", "## Onset notes", ""] + notes
    if corpus.skipped:
        lines += ["", "## Runs left out", ""] + [f"- {s}" for s in corpus.skipped]
    return "\n".join(lines) + "\n"


def thresholds_json(result: Result) -> dict[str, Any]:
    c = result.corpus
    out: dict[str, Any] = {"format": RECORDS_FORMAT, "calibration_seeds": c.calibration_seeds,
                           "held_out_seeds": c.held_out_seeds, "params": asdict(c.params), "signals": {}}
    by_name = {r.name: r for r in result.signals}
    for s in SIGNALS:
        row = by_name[s.name]
        out["signals"][s.name] = {
            "threshold": row.threshold, "direction": s.direction, "unit": s.unit, "tags": list(s.tags),
            "flagged": row.flagged, "note": row.note,
            "calibration": None if row.calibration is None else row.calibration.to_json(),
            "held_out": None if row.held_out is None else row.held_out.to_json()}
    out["scored"] = [{"signal": r.name, "threshold": r.threshold,
                      "calibration": r.calibration.to_json() if r.calibration else None,
                      "held_out": r.held_out.to_json() if r.held_out else None} for r in result.scored]
    return out


def write_outputs(result: Result, out: Path) -> list[Path]:
    from marl_stability.atomic import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "records.json", records_json(result.corpus))
    atomic_write_json(out / "thresholds.json", thresholds_json(result))
    atomic_write_text(out / "report.md", result.report)
    return [out / name for name in OUTPUTS]


def calibrate(dirs: list[Path], out: Path, calibration_seeds: Optional[str] = None,
              held_out_seeds: Optional[str] = None, from_records: Optional[Path] = None,
              params: Optional[SignalParams] = None, quiet: bool = False,
              scores: Optional[list[str]] = None) -> Result:
    """The whole command: validate everything, read (or load) the runs, analyse, then write the three files."""
    if bool(dirs) == (from_records is not None):
        raise UserError("give run directories or --from-records, not both and not neither")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    given = parse_scores(scores)
    cal = parse_seeds(calibration_seeds, "--calibration-seeds") if calibration_seeds is not None else None
    held = parse_seeds(held_out_seeds, "--held-out-seeds") if held_out_seeds is not None else None
    if from_records is not None:
        if params is not None:
            raise UserError("--baseline-updates/--baseline-measurements/--slope-window apply when reading runs, "
                            "not with --from-records (the records keep their own)")
        corpus = resplit(read_records(from_records), cal, held)
    else:
        cal = cal if cal is not None else parse_seeds(DEFAULT_CALIBRATION_SEEDS, "--calibration-seeds")
        held = held if held is not None else parse_seeds(DEFAULT_HELD_OUT_SEEDS, "--held-out-seeds")
        check_disjoint(cal, held)
        params = params or SignalParams()
        params.check()
        corpus = read_corpus(dirs, cal, held, params, quiet)
    result = analyse(corpus, given)
    write_outputs(result, out)
    return result
