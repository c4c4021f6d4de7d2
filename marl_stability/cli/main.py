"""``marl-stability`` command line (also ``python -m marl_stability``).

Every user error ends as one ``error: ...`` line on stderr with exit code 2 and no traceback.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from marl_stability.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Reproduce, instrument and fix the repeated-action failure of multi-agent actor-critics.",
    pretty_exceptions_enable=False,
)

MPE_COMMON_KWARGS = ("continuous_actions", "max_cycles")


def _print_version(value: bool) -> None:
    if value:
        from marl_stability import __version__

        print(f"marl-stability {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version (semver for the public surface, see CHANGELOG.md) and exit"),
) -> None:
    """Reproduce, instrument and fix the repeated-action failure of multi-agent actor-critics."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from marl_stability import envs

    return (UserError, envs.EnvError)


@app.command("envs")
def envs_cmd(
    env_id: Optional[str] = typer.Argument(None, help="show one environment (an mpe2 ID or package.module:callable)"),
    continuous: bool = typer.Option(True, "--continuous/--discrete", help="mpe2 action type to show"),
) -> None:
    """List environments with each agent's observation and action space."""
    from marl_stability import envs

    ids = [env_id] if env_id else envs.list_env_ids()
    for eid in ids:
        kwargs = {"continuous_actions": continuous} if ":" not in eid else {}
        agents = envs.describe(eid, **kwargs)
        typer.echo(f"{eid}  ({len(agents)} agents)")
        for a in agents:
            typer.echo(f"  {a['name']:<14} obs {str(tuple(a['obs_shape'])):<8} action {a['action_space']}")


@app.command("config")
def config_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="show this preset resolved instead of the "
                                          "defaults: a YAML file or a preset name (e.g. maddpg_spread)"),
    set_: list[str] = typer.Option([], "--set", help="override a dotted key, e.g. --set actor_optim.lr=1e-3"),
) -> None:
    """Print the config schema with defaults and descriptions, or a preset resolved."""
    from marl_stability.config import (
        describe_schema,
        dump_yaml,
        load_config,
        resolve_preset,
    )

    if config is None and not set_:
        typer.echo(describe_schema())
    else:
        typer.echo(dump_yaml(load_config(resolve_preset(config) if config is not None else None, set_)), nl=False)


def resolve_config_option(config: Optional[Path]) -> Path:
    """``train --config``: a YAML file or a preset name; absent, the default preset (maddpg_spread)."""
    from marl_stability.config import DEFAULT_PRESET, resolve_preset

    return resolve_preset(DEFAULT_PRESET if config is None else config)


def _resolve_config(config: Optional[Path], run_dir: Path, resume: bool, env: Optional[str], steps: Optional[int],
                    seed: Optional[int], set_: list[str]) -> Any:
    from marl_stability.config import load_config, read_preset

    overrides = list(set_)
    if config is None and resume and (run_dir / "config.yaml").is_file():
        config = run_dir / "config.yaml"  # a resumed run keeps its own config
    config = resolve_config_option(config)
    if env is not None:
        base_env = read_preset(config).get("env", {})
        if not isinstance(base_env, dict):
            base_env = {}
        if env != base_env.get("id", "simple_spread_v3"):
            # Task-specific kwargs (N, local_ratio...) of the preset's env do not carry over to another env;
            # the kwargs every mpe2 task shares do.
            kept = {k: v for k, v in (base_env.get("kwargs") or {"continuous_actions": True, "max_cycles": 25}).items()
                    if k in MPE_COMMON_KWARGS and ":" not in env}
            overrides.insert(0, "env.kwargs=" + json.dumps(kept))
        overrides.insert(0, f"env.id={env}")
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    return load_config(config, overrides)


@app.command("train")
def train_cmd(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="YAML file or preset name (experiments/: maddpg_spread, no_fix_baseline, "
        "repeated_action_failure, ...); default: maddpg_spread, the sensible settings (with --resume: the run's "
        "own config.yaml)"),
    env: Optional[str] = typer.Option(None, "--env", help="environment ID (replaces env.id; keeps only shared mpe2 kwargs)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="total env steps (train.steps)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed (seed)"),
    logdir: Path = typer.Option(Path("runs"), "--logdir", help="parent folder of run directories"),
    name: Optional[str] = typer.Option(None, "--name", help="run directory name (default: <preset>_<env>_s<seed>)"),
    set_: list[str] = typer.Option([], "--set", help="override a dotted config key: --set fixes.obs_norm.enabled=true"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in <logdir>/<name> from its last checkpoint"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete an existing run directory of the same name first"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, no final summary print"),
) -> None:
    """Train one run; writes config.yaml, TensorBoard events, checkpoints/ and summary.json to <logdir>/<name>/.

    Without --config it trains the maddpg_spread preset (MADDPG on simple_spread_v3 with the sensible settings).
    """
    from marl_stability.core.checkpoint import final_checkpoint, resume_checkpoint
    from marl_stability.core.summary import RunSummary
    from marl_stability.fmt import fmt_number
    from marl_stability.training.trainer import Trainer

    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if resume and name is None:
        raise UserError("--resume needs --name of the run to continue")
    if name is not None and (not name or "/" in name or name in (".", "..")):
        raise UserError(f"--name must be a plain folder name, got {name!r}")
    if logdir.exists() and not logdir.is_dir():
        raise UserError(f"--logdir {logdir} is not a directory")
    run_dir = logdir / name if name else None
    cfg = _resolve_config(config, run_dir or Path("."), resume, env, steps, seed, set_)
    if run_dir is None:
        preset = resolve_config_option(config).stem
        run_dir = logdir / f"{preset}_{cfg.env.id.replace(':', '_').replace('.', '_')}_s{cfg.seed}"
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} exists and is not a directory")
    if resume:
        if not resume_checkpoint(run_dir).is_file():
            if final_checkpoint(run_dir).is_file():
                raise UserError(f"--resume: {run_dir} has finished and kept only its final checkpoint (no replay "
                                "buffer: train.checkpoints=final); to extend finished runs, train them with "
                                "--set train.checkpoints=resume")
            raise UserError(f"--resume: no checkpoint in {run_dir}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(f"run directory {run_dir} already exists (use --resume to continue it or --overwrite to replace it)")
    trainer = Trainer(cfg, run_dir, quiet=quiet)  # builds env and agents: fails before touching the disk
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    s = RunSummary.model_validate(trainer.run(resume=resume))
    if not quiet:
        typer.echo(
            f"{s.status}: {run_dir}  env_steps={s.env_steps} updates={s.updates} "
            f"final_return={fmt_number(s.final_return, '.2f')} "
            f"max_grad_norm(actor/critic)={fmt_number(s.grad_peak('actor'), '.3g')}/{fmt_number(s.grad_peak('critic'), '.3g')} "
            f"nonfinite={s.nonfinite_events}"
        )


@app.command("doctor")
def doctor_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="run directories (with TensorBoard events and summary.json), "
                                                    "or folders holding runs at any depth: each run is diagnosed"),
    as_json: bool = typer.Option(False, "--json", help="print the diagnosis as JSON (a list for several runs)"),
) -> None:
    """Diagnose a run: the mechanism, what fired when, and the fixes ranked by measured evidence.

    Which detector fired and when, which layers' gradients grew first, saturation, reward scale, and a ranked list
    of fixes with the exact --set overrides to try."""
    from marl_stability.analysis.doctor import diagnose, render, targets

    runs = targets(run_dirs)
    found = [diagnose(r) for r in runs]
    if as_json:
        typer.echo(json.dumps(found[0] if len(found) == 1 else found, indent=2))
    else:
        typer.echo("\n\n".join(render(d) if len(found) == 1 else f"=== {d['run']}\n{render(d)}" for d in found))


@app.command("cure")
def cure_cmd(
    run_dir: Path = typer.Argument(..., help="a run that failed (its folder: config.yaml, summary.json, events)"),
    top: int = typer.Option(3, "--top", help="fixes to measure: the first K doctor ranks for the run"),
    seeds: int = typer.Option(3, "--seeds", help="fresh seeds per fix (and for the control)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="env steps per trial (default: twice the failure's "
                                        "onset, at least onset + 20k, at most the run's budget)"),
    workers: int = typer.Option(1, "--workers", "-j", help="trials run in parallel (one CPU each)"),
    backend: str = typer.Option("local", "--backend", help="local (process pool) or ray"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (--backend ray)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where the trials and the report go (default: "
                                       "<run>/cure); an existing one is continued"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar, no final summary"),
) -> None:
    """Which fix saves this run, measured: the top fixes doctor ranks for it, each on the run's own config with fresh
    seeds next to an unchanged control; writes cure.md, cure.json and (when a fix cured it) cured.yaml."""
    from marl_stability.studies.cure import run_cure

    out = out if out is not None else run_dir / "cure"
    try:
        r = run_cure(run_dir, out, top=top, seeds=seeds, steps=steps, workers=workers, backend=backend,
                     address=address, quiet=quiet)
    except KeyboardInterrupt:
        print(f"interrupted: continue with marl-stability cure {run_dir} --out {out}", file=sys.stderr)
        sys.exit(130)
    if not quiet:
        c = r["control"]
        typer.echo(f"control: {c['healthy']}/{c['n']} healthy ({r['budget']:,} env steps per trial)")
        for row in r["fixes"]:
            typer.echo(f"{row['arm']}: {row['healthy']}/{row['n']} healthy, final return {row['mean']}: {row['verdict']}")
        typer.echo(f"report: {out / 'cure.md'}" + (f"  preset: {out / 'cured.yaml'}" if r["cured_by"] else ""))


from marl_stability.cli.ablate import register as _register_ablate  # noqa: E402  (after the app's own commands)

_register_ablate(app)

from marl_stability.cli.calibrate import register as _register_calibrate  # noqa: E402

_register_calibrate(app)

from marl_stability.cli.tools import register as _register_tools  # noqa: E402

_register_tools(app)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run the typer app, turning every user error into one ``error:`` line and exit code 2."""
    from marl_stability.cli.tools import RAW_ARGS

    RAW_ARGS.append(list(sys.argv[1:] if argv is None else argv))
    try:
        _run(argv)
    finally:
        RAW_ARGS.pop()


def _run(argv: Optional[list[str]]) -> None:
    try:
        code = app(args=argv, standalone_mode=False, prog_name="marl-stability")
        if isinstance(code, int) and code != 0:  # without standalone mode, an exit code is returned
            sys.exit(code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(2)
    except _user_errors() as e:
        message = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # unwritable --logdir, full disk, permissions: the environment, not a bug
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e.__class__.__name__}{where}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        # Usage errors (unknown option, wrong type, missing value) come from the click that typer ships
        # (vendored in recent typer): recognise them by their interface rather than by a private import.
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            print(f"error: {e.format_message()}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
