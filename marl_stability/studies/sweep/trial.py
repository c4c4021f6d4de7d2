"""One trial (an arm x a seed): plain data a worker receives, and ``run_trial``, which trains, resumes or skips
it in its own run directory and never raises."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from marl_stability.config import RunConfig
from marl_stability.core.summary import read_summary
from marl_stability.errors import UserError
from marl_stability.runs.sweep_layout import FINAL_STATUSES, trial_id

# Test hook: comma-separated trial ids ("arm/seed_n") or arm names whose worker raises instead of training
# ("crash:<id>": the worker process dies instead, as if killed). It is read inside the worker, so it exercises
# the real failure paths (an exception in a worker process; a dead worker process).
FAIL_ENV_VAR = "MARL_STABILITY_SWEEP_FAIL"


@dataclass
class Trial:
    """What a worker needs: plain data only (it crosses process and Ray boundaries)."""

    arm: str
    seed: int
    run_dir: str
    config: dict[str, Any]
    varying: tuple[str, ...] = ()  # config keys (dotted) whose values differ across the sweep's arms

    @property
    def extra(self) -> dict[str, Any]:
        """What the trial's hooks learn about the sweep: HParams label ``arm`` and the columns that vary."""
        return {"labels": {"arm": self.arm}, "hparams_varying": ("arm", "seed", *self.varying)}

    @property
    def id(self) -> str:
        return trial_id(self.arm, self.seed)

    @property
    def threads(self) -> int:
        """The torch threads this trial runs (its config's train.torch_threads, capped by the plan)."""
        return torch_threads(self.config)


def torch_threads(config: dict[str, Any]) -> int:
    """``train.torch_threads`` of a resolved run config (a plain dict, as it travels to workers)."""
    return int(config.get("train", {}).get("torch_threads", 1))


@dataclass
class TrialResult:
    id: str
    state: str  # completed | diverged | failed | interrupted
    error: Optional[str] = None
    status: Optional[str] = None  # summary.json status
    resumed: bool = False
    skipped: bool = False  # already finished on disk; nothing ran
    seconds: float = 0.0


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    line = f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__
    return line[:300]


@contextlib.contextmanager
def _trial_lock(run_dir: Path) -> Any:
    """Exclusive lock per trial, held while it runs.

    After a ``kill -9`` of the parent, a worker may still be running for a moment (until its watchdog sees the
    parent gone); the resumed sweep's worker waits for that lock instead of writing into the same folder.
    """
    lock_path = run_dir.parent / f".{run_dir.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError:  # pragma: no cover - e.g. a file system without locks: go on unprotected
            pass
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _injected_failure(trial: Trial) -> None:
    wanted = {w.strip() for w in os.environ.get(FAIL_ENV_VAR, "").split(",") if w.strip()}
    if f"crash:{trial.id}" in wanted or f"crash:{trial.arm}" in wanted:
        os._exit(3)
    if trial.id in wanted or trial.arm in wanted:
        raise RuntimeError(f"injected failure for {trial.id} ({FAIL_ENV_VAR})")


def run_trial(trial: Trial) -> TrialResult:
    """Run (or resume, or skip) one trial in its run directory. Never raises: a crash is a ``failed`` result."""
    import torch

    start = time.perf_counter()
    run_dir = Path(trial.run_dir)
    resumed = False
    try:
        # The plan capped train.torch_threads at the ablation file's threads_per_worker (1 unless it says more);
        # the trainer sets the same number again when it starts.
        torch.set_num_threads(trial.threads)
        with _trial_lock(run_dir):
            done = read_summary(run_dir)
            if done is not None and done.status in FINAL_STATUSES:
                return TrialResult(trial.id, done.status, status=done.status, skipped=True)
            _injected_failure(trial)
            resumed = _train(trial.config, run_dir, trial.extra)
        # The trainer writes summary.json however the run ends (completed, diverged, interrupted, crashed).
        summary = read_summary(run_dir)
        status = None if summary is None else summary.status
        state = status if status in FINAL_STATUSES else "interrupted" if status == "interrupted" else "failed"
        error = None if state != "failed" else f"run ended with status {status}"
        return TrialResult(trial.id, state, error=error, status=status, resumed=resumed,
                           seconds=time.perf_counter() - start)
    except KeyboardInterrupt:  # only outside the trainer's own handler (e.g. while building it)
        return TrialResult(trial.id, "interrupted", error="interrupted", seconds=time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - a trial's crash must never take the sweep down
        return TrialResult(trial.id, "failed", error=one_line(e), resumed=resumed, seconds=time.perf_counter() - start)


def _train(config: dict[str, Any], run_dir: Path, extra: dict[str, Any]) -> bool:
    """Train in ``run_dir``, continuing from its checkpoint when there is a usable one; True when it resumed."""
    from marl_stability.training.trainer import (
        Trainer,  # torch: imported in the worker only
    )

    cfg = RunConfig.model_validate(config)
    trainer = Trainer(cfg, run_dir, quiet=True, extra=extra)
    if (run_dir / "checkpoints" / "last.pt").is_file():
        try:
            trainer.run(resume=True)
            return True
        except UserError:
            # An unreadable checkpoint or one from another config: this folder is ours, start over.
            trainer = Trainer(cfg, run_dir, quiet=True, extra=extra)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # partial output of a killed attempt without a checkpoint
    trainer.run()
    return False
