"""``marl-stability ablate`` and ``marl-stability report``: fix-ablation sweeps from the command line.

``register(app)`` adds both commands to the main typer app (``marl_stability.cli.main``). The module also runs on
its own (``python -m marl_stability.cli.ablate ablate ...``) with the same one-line error handling, which
the tests use to kill a sweep mid-way.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from marl_stability.runs.trials import tensorboard_hint
from marl_stability.errors import UserError
from marl_stability.studies.sweep.spec import SeedChoice


def ablate_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="ablation file or preset name, e.g. "
                                          "ablation_spread (optional with --resume)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="seeds 0..N-1 (default: the file's seeds; with --resume adds seeds)"),
    seed_offset: Optional[int] = typer.Option(None, "--seed-offset", help="shift the seeds: K..K+N-1 (fresh seeds of your own)"),
    seed_list: Optional[str] = typer.Option(None, "--seed-list", help="exactly these seeds, e.g. 1000-1009 or 3,7,11"),
    workers: int = typer.Option(1, "--workers", "-j", help="trials run in parallel (one CPU each)"),
    backend: str = typer.Option("local", "--backend", help="local (process pool) or ray"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (--backend ray; default: a local Ray)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="sweep directory (default: runs/ablations/<name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the sweep in --out: run only unfinished (and failed) trials"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, no final summary"),
) -> None:
    """Run a fix-ablation sweep (arms x seeds), then write results.csv, report.md and figures/ into --out."""
    from marl_stability.config import resolve_preset
    from marl_stability.studies.report import build_report
    from marl_stability.studies.sweep import load_ablation, run_sweep

    config = resolve_preset(config) if config is not None else None
    if out is None:
        if config is None:
            raise UserError("--out is required with --resume and no --config")
        ab = load_ablation(config)
        out = Path("runs") / "ablations" / (ab.name or config.stem)
    try:
        outcome = run_sweep(config, out, seeds=SeedChoice.parse(seeds, seed_offset, seed_list), workers=workers,
                            backend=backend, address=address, resume=resume, quiet=quiet)
    except KeyboardInterrupt:
        print(f"interrupted: unfinished trials stopped at a checkpoint; continue with --resume --out {out}", file=sys.stderr)
        # SystemExit, not typer.Exit: click's standalone_mode=False would turn Exit into a return value (exit 0).
        sys.exit(130)
    report = build_report(out)
    if not quiet:
        c = outcome.counts
        typer.echo(f"{out}: {c['completed']} completed, {c['diverged']} diverged, {c['failed']} failed, "
                   f"{c['pending'] + c['running']} unfinished ({len(outcome.ran)} run now)")
        for tid, err in outcome.failed.items():
            typer.echo(f"  failed {tid}: {err}")
        typer.echo(f"report: {report['markdown']}  table: {report['csv']}")
        typer.echo(tensorboard_hint(Path(out) / "runs"))


def report_cmd(
    sweep_dir: Path = typer.Argument(..., help="a sweep directory written by `ablate`"),
) -> None:
    """(Re)build results.csv, report.md and figures/ of a sweep from its finished runs."""
    from marl_stability.studies.report import build_report

    rep = build_report(sweep_dir)
    typer.echo(f"report: {rep['markdown']}  table: {rep['csv']}  figures: {len(rep['figures'])}")
    if rep["missing"]:
        typer.echo(f"not finished ({len(rep['missing'])}): {', '.join(rep['missing'])}")


def reproduce_cmd(
    seeds: Optional[int] = typer.Option(None, "--seeds", help="seeds 0..N-1 per arm (default: the file's, 3)"),
    seed_offset: Optional[int] = typer.Option(None, "--seed-offset", help="shift the seeds: K..K+N-1 (fresh seeds of your own)"),
    seed_list: Optional[str] = typer.Option(None, "--seed-list", help="exactly these seeds, e.g. 1000-1009 or 3,7,11"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory (default: runs/reproduce, or runs/reproduce_quick)"),
    quick: bool = typer.Option(False, "--quick", help="a few-minute smoke version (40k env steps, shorter warm-up)"),
    workers: int = typer.Option(2, "--workers", "-j", help="trials run in parallel (one CPU each)"),
    backend: str = typer.Option("local", "--backend", help="local (process pool) or ray"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (--backend ray)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted reproduction in --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete a previous reproduction in --out first"),
    report_only: bool = typer.Option(False, "--report-only", help="only rebuild report.md, summary.json and figures/"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="failure-vs-fixed sweep file or preset name "
                                          "(default: reproduce, i.e. experiments/reproduce.yaml)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, no final summary"),
) -> None:
    """Reproduce the repeated-action failure and its fix (the failure and fixed presets over several seeds).

    Then report.md, summary.json, figures and an episode GIF per arm in --out."""
    from marl_stability.studies.reproduce import (
        build_reproduction_report,
        run_reproduce,
    )

    out = out or Path("runs") / ("reproduce_quick" if quick else "reproduce")
    if report_only:
        if resume or overwrite or quick or seeds is not None or seed_offset is not None or seed_list is not None:
            raise UserError("--report-only takes only --out")
        result = build_reproduction_report(out)
    else:
        try:
            result = run_reproduce(out, seeds=SeedChoice.parse(seeds, seed_offset, seed_list), quick=quick, workers=workers, backend=backend, address=address,
                                   resume=resume, overwrite=overwrite, quiet=quiet, config=config)
        except KeyboardInterrupt:
            print(f"interrupted: unfinished runs stopped at a checkpoint; continue with --resume --out {out}", file=sys.stderr)
            sys.exit(130)
    if not quiet:
        s = result["summary"]
        for name, arm in s["arms"].items():
            ci = arm["final_return_ci"]
            ci_text = f"[{ci[0]:.1f}, {ci[1]:.1f}]" if None not in ci else "[n/a]"
            mean = arm["final_return_mean"]
            typer.echo(f"{name:<8} seeds {len(arm['seeds'])}  collapse {arm['collapse_rate']}  explosion "
                       f"{arm['explosion_rate']}  final team return "
                       f"{'n/a' if mean is None else f'{mean:.1f}'} {ci_text}")
        v = s["verdict"]
        typer.echo(f"failure reproduced: {v['failure_reproduced']}  fixed cured: {v['fixed_cured']}")
        typer.echo(f"report: {result['report']}")
        typer.echo(tensorboard_hint(Path(out) / "runs"))


def register(app: typer.Typer) -> None:
    """Add the ``ablate``, ``report`` and ``reproduce`` commands to a typer app."""
    app.command("ablate")(ablate_cmd)
    app.command("report")(report_cmd)
    app.command("reproduce")(reproduce_cmd)


def main(argv: Optional[list[str]] = None) -> None:
    """Stand-alone entry point with the main CLI's contract: user errors -> one ``error:`` line, exit 2."""
    from marl_stability import envs

    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
    register(app)
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="marl-stability")
        if isinstance(rc, int) and rc:  # --help and friends return their exit code in non-standalone mode
            sys.exit(rc)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (UserError, envs.EnvError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # click usage errors
            print(f"error: {e.format_message()}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
