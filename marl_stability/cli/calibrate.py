"""``marl-stability calibrate``: the command line of ``marl_stability.analysis.calibrate`` (registered by ``cli.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def calibrate_cmd(
    dirs: Optional[list[Path]] = typer.Argument(None, help="run directories, or folders holding runs at any depth "
                                                "(e.g. sweep directories)"),
    out: Path = typer.Option(Path("runs") / "calibration", "--out", "-o", help="where report.md, records.json and "
                             "thresholds.json go"),
    calibration_seeds: Optional[str] = typer.Option(None, "--calibration-seeds", help="seeds the thresholds are "
                                                    "chosen on, e.g. 0-4 or 0,2,4 (default 0-4; with --from-records: "
                                                    "the records' own)"),
    held_out_seeds: Optional[str] = typer.Option(None, "--held-out-seeds", help="seeds the thresholds are scored on "
                                                 "(default 5-9; with --from-records: the records' own)"),
    from_records: Optional[Path] = typer.Option(None, "--from-records", help="re-render from a records.json "
                                                "instead of reading runs"),
    baseline_updates: Optional[int] = typer.Option(None, "--baseline-updates", help="growth signals: the early "
                                                   "level is the median of the first K logged updates (default 20)"),
    baseline_measurements: Optional[int] = typer.Option(None, "--baseline-measurements", help="effective-rank "
                                                        "drop: early level from the first M measurements (default 3)"),
    slope_window: Optional[int] = typer.Option(None, "--slope-window", help="critic grad-norm log-slope: trailing "
                                               "window of W logged updates (default 20)"),
    score: Optional[list[str]] = typer.Option(None, "--score", help="SIGNAL=THETA: also score this given threshold "
                                               "(e.g. a detector default) on both splits; repeatable"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, no printed table"),
) -> None:
    """Calibrate early-warning signals and the detectors on labelled runs (held-out seeds score them).

    Thresholds chosen on the calibration seeds, precision / recall / false alarms / lead time reported on the
    held-out seeds."""
    from marl_stability.analysis.calibrate import calibrate
    from marl_stability.analysis.calibrate_report import signal_table
    from marl_stability.runs.signals import SignalParams

    params = None
    if (baseline_updates, baseline_measurements, slope_window) != (None, None, None):
        d = SignalParams()
        params = SignalParams(baseline_updates if baseline_updates is not None else d.baseline_updates,
                              baseline_measurements if baseline_measurements is not None else d.baseline_measurements,
                              slope_window if slope_window is not None else d.slope_window)
    result = calibrate(list(dirs or []), out, calibration_seeds, held_out_seeds, from_records, params, quiet, score)
    if quiet:
        return
    for note in result.corpus.skipped:
        typer.echo(f"skipped {note}", err=True)
    c = result.corpus
    typer.echo(f"{len(c.records)} runs labelled ({len(c.split('calibration'))} calibration, "
               f"{len(c.split('held-out'))} held-out), {c.ignored} ignored, {len(c.skipped)} skipped")
    typer.echo("\n".join(signal_table(result.signals)))
    if result.scored:
        typer.echo("given thresholds (--score):\n" + "\n".join(signal_table(result.scored, given=True)))
    typer.echo(f"report: {out / 'report.md'}  records: {out / 'records.json'}  thresholds: {out / 'thresholds.json'}")


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` to a typer app."""
    app.command("calibrate")(calibrate_cmd)
